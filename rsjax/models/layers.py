"""Layers shared by the models, initialised as PyTorch initialises them.

The reference implementations are PyTorch; matching their initial distributions
(``kaiming_uniform(a=sqrt(5))`` for weights, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for
biases) keeps from-scratch results comparable with the authors' runs.

Convolutions run channels first internally (``CNHW``: channels, batch, height, width). A stride-1
'same' convolution is then a GEMM over all taps, ``Z = [W_tap0; W_tap1; ...] @ X`` (``(taps *
Cout, Cin) @ (Cin, pixels)``), followed by the sum of each tap's plane shifted by its offset
(:func:`conv_same_multi`); several convolutions of one input share that GEMM. It runs over bands
of image rows inside a ``lax.scan``, so each band's Z is summed while it is still in cache and
the whole-image Z (taps times the output) is never stored; the gradient is the same scheme run
backwards. When ``Cin < Cout`` the inputs are gathered instead (im2col,
``(Cout, taps * Cin) @ (taps * Cin, pixels)``), which moves less data. On CPU these run at GEMM
speed, where XLA's (dilated) convolution does not (its weight gradient is ~100x slower).

Those GEMM forms are written for XLA:CPU; on a GPU (or TPU) rsjax uses XLA's own convolution
(cuDNN on a GPU) instead: :func:`conv_form` picks per backend, ``RSJAX_CONV=gemm|xla|polyphase``
overrides it. ``polyphase`` is XLA's convolution with each dilated one computed as an undilated
convolution of the ``d x d`` polyphase sub-images moved into the batch (:func:`polyphase_conv_cnhw`).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


CONV_CHOICES = ("auto", "gemm", "xla", "polyphase")
AUTO_FORM_OFF_CPU = "polyphase"


def conv_form() -> str:
    """How rsjax computes convolutions (and the transposes and fusion barriers around them):
    ``"gemm"``, its forms for XLA:CPU (:func:`conv_same_multi`, :func:`transpose_by_gemm`,
    :func:`materialize`, :class:`rsjax.models.resnet.Conv`); ``"xla"``, XLA's own convolution and
    transpose; ``"polyphase"``, XLA's with each dilated convolution rewritten as an undilated one
    (:func:`polyphase_conv_cnhw`).

    Read when a function is traced, from the environment variable ``RSJAX_CONV``: ``auto``
    (default: the GEMM forms on the CPU backend, for which they were written and measured,
    ``AUTO_FORM_OFF_CPU`` on GPU and TPU, which lower XLA's convolutions to cuDNN and the like),
    ``gemm``, ``xla`` or ``polyphase``. All compute the same function (tests); the GPU figures
    behind the default are in ``benchmarks/README.md``."""
    choice = os.environ.get("RSJAX_CONV", "auto").strip().lower() or "auto"
    if choice not in CONV_CHOICES:
        raise ValueError(f"RSJAX_CONV={choice!r} is not one of {', '.join(CONV_CHOICES)}; "
                         f"unset it (auto: the GEMM forms on CPU, {AUTO_FORM_OFF_CPU!r} elsewhere)")
    if choice == "auto":
        return "gemm" if jax.default_backend() == "cpu" else AUTO_FORM_OFF_CPU
    return choice


def gemm_forms() -> bool:
    """Whether :func:`conv_form` is ``"gemm"``: rsjax's forms for XLA:CPU."""
    return conv_form() == "gemm"


def transpose_by_gemm(a: jax.Array) -> jax.Array:
    """``a.T`` for a 2-D ``(M, C)`` array, computed as the GEMM ``eye(C) @ a^T`` (the right operand
    contracted on its last axis) at full precision, exact for finite values (one product by 1 per
    value); a plain transpose when :func:`gemm_forms` is off.

    XLA:CPU runs this on its fast GEMM path, while its own transposes of large arrays are untiled
    strided copies, several times slower again when an elementwise producer is fused into them:
    13 ms for a 4 MB BatchNorm gradient of the SNCA-CE step, 74 ms for the softmax over the 63
    bands of a 166 x 600 scene computed along the strided axis."""
    if not gemm_forms():
        return a.T
    return lax.dot_general(jnp.eye(a.shape[1], dtype=a.dtype), a, (((1,), (1,)), ((), ())),
                           precision=lax.Precision.HIGHEST)


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
    """``x`` itself, computed into a buffer of its own before any consumer reads it (a fusion
    barrier); a no-op when :func:`gemm_forms` is off.

    XLA:CPU fuses a cheap elementwise producer into every consumer and recomputes it per use, and
    removes ``lax.optimization_barrier`` before fusing. In the max-pool backward of the SNCA-CE
    step it recomputed the window argmax (9 compares) and the incoming gradient (a 9-term col2im
    sum) up to four times per input pixel: 12 ms for the stem's 16 MB gradient (2-core Xeon).
    Here ``x`` goes through a ``while`` loop with a runtime trip count (1; 0 when ``x``'s first
    element is NaN, or an integer type's minimum) whose body multiplies by a runtime one, which
    XLA can neither fold nor fuse across: exact (``v * 1 == v``, NaN and infinities included), one
    extra pass over ``x``.
    The derivative is the identity."""
    if not gemm_forms() or x.size == 0:
        return x
    first = x.reshape(-1)[0]
    if jnp.issubdtype(x.dtype, jnp.inexact):
        ok = first == first                   # runtime values XLA cannot fold (x == x is for ints)
    else:
        ok = first != jnp.iinfo(x.dtype).min
    trips, one = ok.astype(jnp.int32), ok.astype(x.dtype)
    return lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, c[1] * one), (jnp.int32(0), x))[1]


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    return materialize(primals[0]), tangents[0]


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name) -> jnp.dtype:
    """The computation type a config names: ``float32``, or ``bfloat16`` for mixed precision
    (bfloat16 convolutions, and the ResNet's FC layers; float32 parameters, BatchNorm statistics
    and loss). Meant for GPUs: on CPU the GEMM forms then also accumulate kernel gradients in
    bfloat16."""
    if str(name) not in COMPUTE_DTYPES:
        raise ValueError(f"dtype {name!r} is not supported: use one of {', '.join(COMPUTE_DTYPES)}")
    return jnp.dtype(str(name))


def torch_uniform(fan_in: int):
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


# ----------------------------------------------------------------------------- 'same' convolution, CNHW

BAND_BYTES = 8 << 20  # target size of one band's Z (and of its gradient): a few MB, cache-resident


def tap_offsets(k: int, dilation: int) -> list[tuple[int, int]]:
    """(dh, dw) of every tap of a k x k kernel, row-major: tap (i, j) reads pixel (h + dh, w + dw)."""
    c = k // 2
    return [((i - c) * dilation, (j - c) * dilation) for i in range(k) for j in range(k)]


def _check_kernel(kernel):
    k = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"conv_same needs a square odd kernel, got {kernel.shape[:2]}")
    return k


def _taps_matrix(kernel: jax.Array) -> jax.Array:
    """(k, k, Cin, Cout) -> (k*k*Cout, Cin), rows ordered (tap, output channel)."""
    k, _, cin, cout = kernel.shape
    return kernel.transpose(0, 1, 3, 2).reshape(k * k * cout, cin)


def _pad_hw(a: jax.Array, top: int, bottom: int, left: int = 0, right: int = 0) -> jax.Array:
    """Zero-pad the last two axes (rows, columns) of ``a``; negative amounts crop."""
    cfg = [(0, 0, 0)] * (a.ndim - 2) + [(top, bottom, 0), (left, right, 0)]
    return lax.pad(a, jnp.zeros((), a.dtype), cfg)


def _bands(x: jax.Array, kernels, dilations, band_rows: int | None):
    """Rows per band, number of bands, each kernel's halo (rows/columns it reaches) and the largest."""
    cin, n, h, w = x.shape
    halos = [(k.shape[0] // 2) * d for k, d in zip(kernels, dilations)]
    rows = sum(k.shape[0] ** 2 * k.shape[-1] for k in kernels)
    b = band_rows or BAND_BYTES // (x.dtype.itemsize * rows * n * (w + 2 * max(halos)))
    b = int(min(max(b, 1), h))
    return b, -(-h // b), halos, max(halos)


def conv_same_multi(x: jax.Array, kernels: tuple, dilations: tuple, band_rows: int | None = None) -> tuple:
    """Stride-1 'same' convolutions (odd square HWIO kernels, no bias) of one channels-first input
    ``x`` (Cin, N, H, W), all from one GEMM (:func:`gemm_forms`; else one XLA convolution each, in
    the :func:`conv_form` chosen);
    returns a tuple of (Cout_i, N, H, W).

    A ``lax.scan`` over bands of ``band_rows`` image rows (default: about ``BAND_BYTES`` of Z per
    band) computes ``Z = [W_1; W_2; ...] @ X_band`` for the band (X zero-padded by the largest
    halo on the left and right, so shifting a tap's plane along W is a plain slice), sums each
    kernel's taps (columns shifted per tap, the k row offsets added into a carry of the rows that
    later bands still reach: overlap-add) and emits the finished rows. The gradient runs the same
    bands: ``dZ_band`` is the im2col of the output gradients (slices of them, padded once),
    ``dW += dZ_band X_band^T`` and ``dX_band = W^T dZ_band``; jit drops ``dX`` when nothing needs
    it (the network's input). Equal to ``lax.conv_general_dilated`` in value and gradient (tests).
    """
    for kern in kernels:
        _check_kernel(kern)
    if not gemm_forms():
        return tuple(_xla_conv_cnhw(x, kern, d) for kern, d in zip(kernels, dilations))
    return _conv_same_multi_gemm(x, tuple(kernels), tuple(dilations), band_rows)


def _xla_conv_cnhw(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """``lax.conv_general_dilated`` with 'SAME' padding on a CNHW input (the reference), or
    :func:`polyphase_conv_cnhw` for a dilated one where :func:`conv_form` is ``"polyphase"``."""
    if dilation > 1 and conv_form() == "polyphase":
        return polyphase_conv_cnhw(x, kernel, dilation)
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("CNHW", "HWIO", "CNHW"))


def polyphase_conv_cnhw(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """'SAME' stride-1 convolution of a CNHW ``x`` with an HWIO ``kernel`` dilated by ``d =
    dilation``, as an undilated convolution of the ``d * d`` polyphase sub-images stacked along the
    batch (TensorFlow's ``atrous_conv2d`` does this with ``space_to_batch``): output pixel
    ``(d q + a, d r + b)`` reads only input pixels of phase ``(a, b)``, at ``(q + i - c, r + j - c)``
    on that phase's grid. H and W are zero-padded to multiples of ``d`` (where 'SAME' reads zeros
    anyway). Equal to the dilated convolution in value and gradients (tests); XLA:GPU's dilated
    convolutions are several times slower than undilated ones of the same FLOPs."""
    d = dilation
    c, n, h, w = x.shape
    hp, wp = -(-h // d), -(-w // d)
    x = _pad_hw(x, 0, hp * d - h, 0, wp * d - w)
    x = x.reshape(c, n, hp, d, wp, d).transpose(0, 3, 5, 1, 2, 4).reshape(c, d * d * n, hp, wp)
    y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("CNHW", "HWIO", "CNHW"))
    y = y.reshape(-1, d, d, n, hp, wp).transpose(0, 3, 4, 1, 5, 2).reshape(-1, n, hp * d, wp * d)
    return y[:, :, :h, :w]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_same_multi_gemm(x: jax.Array, kernels: tuple, dilations: tuple, band_rows: int | None) -> tuple:
    return _multi_fwd(x, kernels, dilations, band_rows)[0]


def _multi_fwd(x, kernels, dilations, band_rows):
    cin, n, h, w = x.shape
    b, nb, halos, p = _bands(x, kernels, dilations, band_rows)
    wcat = jnp.concatenate([_taps_matrix(k) for k in kernels], axis=0)
    xp = _pad_hw(x, 0, nb * b - h, p, p)                      # rows up to whole bands, columns by the halo

    def band(carries, r0):
        xs = lax.dynamic_slice(xp, (0, 0, r0, 0), (cin, n, b, w + 2 * p))
        z = (wcat @ xs.reshape(cin, -1)).reshape(-1, n, b, w + 2 * p)
        outs, new_carries, o = [], [], 0
        for kern, d, q, acc in zip(kernels, dilations, halos, carries):
            k, cout = kern.shape[0], kern.shape[-1]
            for i in range(k):                                # taps of kernel row i share a row offset
                dh = (i - k // 2) * d
                row = None
                for j in range(k):
                    dw = (j - k // 2) * d
                    t = o + (i * k + j) * cout
                    plane = z[t:t + cout, :, :, p + dw:p + dw + w]
                    row = plane if row is None else row + plane
                acc = acc + _pad_hw(row, q - dh, q + dh)      # output rows [r0 - q, r0 + b + q)
            outs.append(acc[:, :, :b])                        # rows [r0 - q, r0 + b - q) are complete
            new_carries.append(_pad_hw(acc[:, :, b:], 0, b))
            o += k * k * cout
        return tuple(new_carries), tuple(outs)

    carries = tuple(jnp.zeros((k.shape[-1], n, b + 2 * q, w), x.dtype) for k, q in zip(kernels, halos))
    carries, outs = lax.scan(band, carries, jnp.arange(nb, dtype=jnp.int32) * b)
    ys = []
    for out, acc, q in zip(outs, carries, halos):
        rows = out.transpose(1, 2, 0, 3, 4).reshape(out.shape[1], n, nb * b, w)   # rows [-q, nb b - q)
        ys.append(jnp.concatenate([rows, acc], axis=2)[:, :, q:q + h])             # + rows left in the carry
    return tuple(ys), (x, kernels)


def _multi_bwd(dilations, band_rows, res, gs):
    x, kernels = res
    cin, n, h, w = x.shape
    b, nb, halos, _ = _bands(x, kernels, dilations, band_rows)
    wcat = jnp.concatenate([_taps_matrix(k) for k in kernels], axis=0)
    xr = _pad_hw(x, 0, nb * b - h)
    gps = [_pad_hw(g, q, q + nb * b - h, q, q) for g, q in zip(gs, halos)]

    def band(dw, r0):
        xs = lax.dynamic_slice(xr, (0, 0, r0, 0), (cin, n, b, w)).reshape(cin, -1)
        pieces = []
        for kern, d, q, gp in zip(kernels, dilations, halos, gps):
            gb = lax.dynamic_slice(gp, (0, 0, r0, 0), (kern.shape[-1], n, b + 2 * q, w + 2 * q))
            pieces += [gb[:, :, q - dh:q - dh + b, q - dw_:q - dw_ + w] for dh, dw_ in tap_offsets(kern.shape[0], d)]
        dz = jnp.concatenate(pieces, axis=0).reshape(wcat.shape[0], -1)
        return dw + dz @ xs.T, (wcat.T @ dz).reshape(cin, n, b, w)

    dw, dxs = lax.scan(band, jnp.zeros(wcat.shape, wcat.dtype), jnp.arange(nb, dtype=jnp.int32) * b)
    dx = dxs.transpose(1, 2, 0, 3, 4).reshape(cin, n, nb * b, w)[:, :, :h]
    dks, o = [], 0
    for kern in kernels:
        k, _, _, cout = kern.shape
        dks.append(dw[o:o + k * k * cout].reshape(k, k, cout, cin).transpose(0, 1, 3, 2).astype(kern.dtype))
        o += k * k * cout
    return dx, tuple(dks)


_conv_same_multi_gemm.defvjp(_multi_fwd, _multi_bwd)


def _shift(a: jax.Array, dh: int, dw: int) -> jax.Array:
    """``out[..., y, x] = a[..., y + dh, x + dw]``, zero where that falls outside the image."""
    return _pad_hw(a, -dh, dh, -dw, dw)


def _im2col(x, k, dilation):
    return jnp.concatenate([_shift(x, dh, dw) for dh, dw in tap_offsets(k, dilation)], axis=0)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col_cnhw(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    return _im2col_fwd(x, kernel, dilation)[0]


def _im2col_fwd(x, kernel, dilation):
    cin = x.shape[0]
    k, cout = kernel.shape[0], kernel.shape[-1]
    cols = _im2col(x, k, dilation).reshape(k * k * cin, -1)
    y = kernel.reshape(k * k * cin, cout).T @ cols
    return y.reshape(cout, *x.shape[1:]), (x, kernel)


def _im2col_bwd(dilation, res, g):
    # the columns are rebuilt rather than kept: they are k*k times the input
    x, kernel = res
    cin = x.shape[0]
    k, cout = kernel.shape[0], kernel.shape[-1]
    g2 = g.reshape(cout, -1)
    cols = _im2col(x, k, dilation).reshape(k * k * cin, -1)
    dkernel = (cols @ g2.T).reshape(k, k, cin, cout).astype(kernel.dtype)
    dcols = (kernel.reshape(k * k * cin, cout) @ g2).reshape(k * k, cin, *x.shape[1:])
    dx = None
    for t, (dh, dw) in enumerate(tap_offsets(k, dilation)):
        s = _shift(dcols[t], -dh, -dw)
        dx = s if dx is None else dx + s
    return dx, dkernel


_conv_im2col_cnhw.defvjp(_im2col_fwd, _im2col_bwd)


def conv_same_cnhw(x: jax.Array, kernel: jax.Array, dilation: int = 1, band_rows: int | None = None) -> jax.Array:
    """A stride-1 'same' convolution (odd square HWIO kernel, no bias) of a channels-first
    ``(Cin, N, H, W)`` input, returning ``(Cout, N, H, W)``: :func:`conv_same_multi` with one
    kernel, or im2col when ``Cin < Cout`` (the inputs are then the smaller side). Equal to
    ``lax.conv_general_dilated`` with 'SAME' padding in value and gradient (tests)."""
    k = _check_kernel(kernel)
    if x.shape[0] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[0]} channels, kernel expects {kernel.shape[2]}")
    if not gemm_forms():
        return _xla_conv_cnhw(x, kernel, dilation)
    if k == 1:
        return (kernel[0, 0].T @ x.reshape(x.shape[0], -1)).reshape(kernel.shape[-1], *x.shape[1:])
    if kernel.shape[2] < kernel.shape[3]:
        return _conv_im2col_cnhw(x, kernel, dilation)
    return conv_same_multi(x, (kernel,), (dilation,), band_rows)[0]


def conv_taps(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """:func:`conv_same_cnhw` for NHWC input and output."""
    _check_kernel(kernel)
    return conv_same_cnhw(x.transpose(3, 0, 1, 2), kernel, dilation).transpose(1, 2, 3, 0)


# ----------------------------------------------------------------------------- modules

class Conv(nn.Module):
    """2-D convolution with HWIO kernel, 'same' padding unless ``padding`` is given.

    ``layout`` is ``"NHWC"`` (default) or ``"CNHW"`` (channels first, batch second: the layout in
    which :func:`conv_same_cnhw` works without transposes). ``impl='taps'`` (default) computes
    stride-1 'same' convolutions with :func:`conv_same_cnhw` and 1 x 1 'VALID' ones as a strided
    slice and a GEMM; ``impl='lax'`` always uses ``lax.conv_general_dilated``.
    """
    features: int
    kernel_size: int
    dilation: int = 1
    stride: int = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    impl: str = "taps"
    layout: str = "NHWC"

    @nn.compact
    def __call__(self, x):
        if self.layout not in ("NHWC", "CNHW"):
            raise ValueError(f"layout must be 'NHWC' or 'CNHW', got {self.layout!r}")
        cnhw = self.layout == "CNHW"
        k, cin = self.kernel_size, x.shape[0 if cnhw else -1]
        fan_in = k * k * cin
        kernel = self.param("kernel", torch_uniform(fan_in), (k, k, cin, self.features)).astype(x.dtype)
        bias = self.param("bias", torch_uniform(fan_in), (self.features,)).astype(x.dtype)
        b = bias[:, None, None, None] if cnhw else bias
        if self.impl == "taps" and self.stride == 1 and self.padding == "SAME" and k % 2 == 1:
            return (conv_same_cnhw(x, kernel, self.dilation) if cnhw else conv_taps(x, kernel, self.dilation)) + b
        if self.impl == "taps" and k == 1 and self.dilation == 1 and self.padding == "VALID" and cnhw:
            s = self.stride
            return conv_same_cnhw(x[:, :, ::s, ::s], kernel) + b
        y = lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), self.padding,
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=(self.layout, "HWIO", self.layout))
        return y + b


class ConvParams(nn.Module):
    """The kernel and bias of a :class:`Conv` (same names, shapes and initialisation), for a
    parent that computes several convolutions together (:func:`conv_same_multi`)."""
    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_features: int):
        k = self.kernel_size
        fan_in = k * k * in_features
        kernel = self.param("kernel", torch_uniform(fan_in), (k, k, in_features, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return kernel, bias


class Dense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return x @ kernel + bias


def batch_norm(train: bool | None, name: str | None = None, axis: int = -1) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 in PyTorch's convention, eps 1e-5);
    ``axis`` is the channel axis (0 for CNHW). ``train=None`` leaves ``use_running_average`` to
    the call (for modules defined in ``setup``)."""
    return nn.BatchNorm(use_running_average=None if train is None else not train, axis=axis,
                        momentum=0.9, epsilon=1e-5, name=name)
