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

Every convolution of the network is made by the one ``conv`` field of :class:`ResNet`. The
default, :class:`Conv`, computes the same convolution as ``flax.linen.Conv`` (same parameter
names and shapes) as one GEMM over gathered patches (:func:`conv_im2col`; with a ResNet's
many channels and small images this beat the GEMM over taps of
:func:`rsjax.models.layers.conv_taps` by 1.3x in the whole SNCA-CE step); the max-pool keeps the index of
the first maximum and routes the gradient there (:func:`max_pool`). On a CPU, XLA's own
convolution and max-pool gradients are several times slower; both forms are equal in value
and gradient (tests/test_resnet_ops.py), and ``conv=flax.linen.Conv`` restores XLA's.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax import lax

from rsjax.bank import l2_normalize
from rsjax.models.layers import torch_uniform

ModuleDef = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")   # torchvision ResNet
fc_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")      # kaiming_normal_


def conv_im2col(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Any 2-D convolution (NHWC, HWIO kernel, explicit padding) as one GEMM over gathered patches."""
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    sh, sw = strides
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    cols = [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return patches @ kernel.reshape(kh * kw * cin, cout)


class Conv(nn.Module):
    """Drop-in for ``flax.linen.Conv`` (explicit padding, no dilation) computed as GEMMs."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Callable = conv_kernel_init

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features)).astype(self.dtype)
        x = x.astype(self.dtype)
        y = conv_im2col(x, kernel, tuple(self.strides), tuple(tuple(p) for p in self.padding))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2, pad: int = 1) -> jax.Array:
    """Max-pool (square window, -inf padding) whose gradient goes to the first maximum of each
    window, as XLA's and PyTorch's do; the backward pass is strided pads instead of XLA's slow
    select-and-scatter on CPU."""
    return _max_pool_fwd(x, window, stride, pad)[0]


def _pool_taps(xp, k, s, ho, wo):
    for i in range(k):
        for j in range(k):
            yield i * k + j, xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]


def _max_pool_fwd(x, k, s, p):
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    m = arg = None
    for t, v in _pool_taps(xp, k, s, ho, wo):
        if m is None:
            m, arg = v, jnp.zeros(v.shape, jnp.int8)
        else:
            better = v > m                                   # strict: the first maximum wins ties
            m, arg = jnp.where(better, v, m), jnp.where(better, jnp.int8(t), arg)
    return m, (arg, x.shape)


def _max_pool_bwd(k, s, p, res, g):
    arg, (b, h, w, c) = res
    hp, wp = h + 2 * p, w + 2 * p
    ho, wo = g.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    dx = None
    for t in range(k * k):
        i, j = divmod(t, k)
        placed = lax.pad(jnp.where(arg == t, g, zero), zero,
                         ((0, 0, 0), (i, hp - i - s * (ho - 1) - 1, s - 1), (j, wp - j - s * (wo - 1) - 1, s - 1),
                          (0, 0, 0)))
        dx = placed if dx is None else dx + placed
    return (dx[:, p:p + h, p:p + w, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


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
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = max_pool(x, 3, 2, 1)
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
