"""Layers shared by the models, initialised as PyTorch initialises them.

The reference implementations are PyTorch; matching their initial distributions
(``kaiming_uniform(a=sqrt(5))`` for weights, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for
biases) keeps from-scratch results comparable with the authors' runs.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def torch_uniform(fan_in: int):
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def conv_taps(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """A stride-1 'same' convolution (odd kernel) as one GEMM over all taps, then shifted adds.

    ``Z = X @ [W_00 | W_01 | ... ]`` computes every tap's contribution for every pixel in one
    matrix product (``pixels x Cin`` by ``Cin x k*k*Cout``); output pixel (h, w) then sums
    ``Z[h + (i - c) d, w + (j - c) d, tap (i, j)]``. Equal to ``lax.conv_general_dilated`` with
    'SAME' padding, in value and gradient; on CPU it runs at GEMM speed where XLA's dilated
    convolution does not.
    """
    b, h, w, cin = x.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    if kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"conv_taps needs a square odd kernel, got {kernel.shape[:2]}")
    c = k // 2
    z = x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
    z = z.reshape(b, h, w, k, k, cout)
    p = c * dilation
    z = jnp.pad(z, ((0, 0), (p, p), (p, p), (0, 0), (0, 0), (0, 0)))
    y = None
    for i in range(k):
        for j in range(k):
            tap = z[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w, i, j, :]
            y = tap if y is None else y + tap
    return y


class Conv(nn.Module):
    """2-D convolution over NHWC input with HWIO kernel, 'same' padding unless ``padding`` is given.

    ``impl='taps'`` (default) computes stride-1 'same' convolutions with :func:`conv_taps`;
    ``impl='lax'`` always uses ``lax.conv_general_dilated``.
    """
    features: int
    kernel_size: int
    dilation: int = 1
    stride: int = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    impl: str = "taps"

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        fan_in = k * k * cin
        kernel = self.param("kernel", torch_uniform(fan_in), (k, k, cin, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        if self.impl == "taps" and self.stride == 1 and self.padding == "SAME" and k % 2 == 1:
            return conv_taps(x, kernel.astype(x.dtype), self.dilation) + bias.astype(x.dtype)
        y = lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride, self.stride), self.padding,
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(x.dtype)


class Dense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return x @ kernel + bias


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 in PyTorch's convention, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
