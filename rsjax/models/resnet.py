"""ResNet18 (ImageNet layout) with the SNCA-CE heads, in the style of flax ``examples/imagenet``.

Backbone: 7x7 stride-2 stem convolution, BatchNorm, ReLU, 3x3 stride-2 max-pool, four stages
of basic blocks (``stage_sizes``; ``(2, 2, 2, 2)`` is ResNet18) with 64, 128, 256, 512
filters, global average pooling (512 features). Padding is explicit and equal to torchvision's
(a stride-2 'SAME' convolution in XLA pads differently), so torchvision weights converted with
:mod:`rsjax.models.convert` give the same outputs.

Heads (the authors' ``ResNet18_cls``): FC1 512 -> D; the embedding ``f`` is the L2-normalised
FC1 output; FC2 D -> C maps the UNnormalised FC1 output ``v`` to class logits. FC weights are
Kaiming-normal (``fan_in``, gain sqrt 2, as ``torch.nn.init.kaiming_normal_``); FC biases keep
PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Convolutions are Kaiming-normal
(``fan_out``), BatchNorm scale 1, bias 0, as torchvision initialises a ResNet.

Every convolution of the network is made by the one ``conv`` field of :class:`ResNet`
(default ``flax.linen.Conv`` without bias), so a faster implementation can be swapped in there.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.bank import l2_normalize
from rsjax.models.layers import torch_uniform

ModuleDef = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")   # torchvision ResNet
fc_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")      # kaiming_normal_


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (1x1 projection when the
    shape changes). Submodule names follow torchvision: conv1, bn1, conv2, bn2, downsample_*."""
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(3), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), (1, 1), padding=_pad(3), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), padding=_pad(1),
                                 name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ResNet backbone with the SNCA-CE heads.

    Attributes:
      stage_sizes: basic blocks per stage; ``(2, 2, 2, 2)`` for ResNet18.
      dim: D, the embedding size (FC1 output).
      num_classes: C, the FC2 output; 0 builds no FC2 (methods without a CE term).
      num_filters: filters of the first stage (doubled each stage).
      conv: the convolution module class used for every convolution.

    ``__call__(x, train)`` takes NHWC float images and returns a dict with ``pooled`` (after
    global average pooling), ``v`` (FC1 output), ``embedding`` (``v`` L2-normalised) and
    ``logits`` (FC2 of ``v``; absent when ``num_classes == 0``). ``train=True`` normalises
    with batch statistics and needs ``mutable=['batch_stats']``.
    """
    stage_sizes: Sequence[int]
    dim: int = 128
    num_classes: int = 0
    num_filters: int = 64
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.num_filters * 2 ** i, conv=conv, norm=norm, strides=strides,
                               name=f"layer{i + 1}_{j}")(x)
        pooled = jnp.mean(x, axis=(1, 2))
        v = nn.Dense(self.dim, dtype=self.dtype, kernel_init=fc_kernel_init,
                     bias_init=torch_uniform(pooled.shape[-1]), name="fc1")(pooled)
        out = {"pooled": pooled, "v": v, "embedding": l2_normalize(v.astype(jnp.float32))}
        if self.num_classes:
            logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=fc_kernel_init,
                              bias_init=torch_uniform(self.dim), name="fc2")(v)
            out["logits"] = logits.astype(jnp.float32)
        return out


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2))
