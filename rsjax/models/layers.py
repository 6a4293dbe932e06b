"""Layers shared by the models, initialised as PyTorch initialises them.

The reference implementations are PyTorch; matching their initial distributions
(``kaiming_uniform(a=sqrt(5))`` for weights, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for
biases) keeps from-scratch results comparable with the authors' runs.
"""
from __future__ import annotations

from functools import partial
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


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def shift_sum(z: jax.Array, dilation: int) -> jax.Array:
    """``y[h, w] = sum_ij z[h + (i - c) d, w + (j - c) d, i, j]`` (zero outside the image).

    ``z`` is ``(B, H, W, k, k, C)``: every tap's contribution at every pixel. The custom
    gradient is one im2col of the incoming gradient (a single stack), where autodiff of the
    sum would build k*k padded copies.
    """
    b, h, w, k, _, c = z.shape
    p = (k // 2) * dilation
    zp = jnp.pad(z, ((0, 0), (p, p), (p, p), (0, 0), (0, 0), (0, 0)))
    y = None
    for i in range(k):
        for j in range(k):
            tap = zp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w, i, j, :]
            y = tap if y is None else y + tap
    return y


def _shift_sum_fwd(z, dilation):
    return shift_sum(z, dilation), z.shape[3]


def _shift_sum_bwd(dilation, k, g):
    b, h, w, c = g.shape
    p = (k // 2) * dilation
    gp = jnp.pad(g, ((0, 0), (p, p), (p, p), (0, 0)))
    r = lambda i: (k - 1 - i) * dilation
    cols = [gp[:, r(i):r(i) + h, r(j):r(j) + w, :] for i in range(k) for j in range(k)]
    return (jnp.stack(cols, axis=3).reshape(b, h, w, k, k, c),)


shift_sum.defvjp(_shift_sum_fwd, _shift_sum_bwd)


def conv_taps(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """A stride-1 'same' convolution (odd square kernel) as one GEMM over all taps.

    ``Z = X @ [W_00 | W_01 | ... ]`` computes every tap's contribution for every pixel in one
    matrix product (``pixels x Cin`` by ``Cin x k*k*Cout``); :func:`shift_sum` then adds each
    tap's plane at its offset. When ``Cin < Cout`` the inputs are gathered instead (im2col:
    ``pixels x k*k*Cin`` by ``k*k*Cin x Cout``), which moves less data. Equal to ``lax.conv_general_dilated`` with 'SAME' padding, in
    value and gradient; on CPU it runs at GEMM speed where XLA's (dilated) convolution does not.
    """
    b, h, w, cin = x.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    if kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"conv_taps needs a square odd kernel, got {kernel.shape[:2]}")
    if cin < cout:  # fewer input than output channels: gathering the inputs (im2col) moves less data
        p = (k // 2) * dilation
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = [xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w, :]
                for i in range(k) for j in range(k)]
        return jnp.concatenate(cols, axis=-1) @ kernel.reshape(k * k * cin, cout)
    z = x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
    return shift_sum(z.reshape(b, h, w, k, k, cout), dilation)


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
