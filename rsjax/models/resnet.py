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

Every convolution of the network is made by the one ``conv`` field of :class:`ResNet`. By
default (``None``) that is :class:`Conv` where :func:`rsjax.models.layers.gemm_forms` holds (the
CPU backend) and ``flax.linen.Conv`` (cuDNN) on a GPU or TPU. :class:`Conv` computes the same
convolution as ``flax.linen.Conv`` (same parameter names and shapes) as one GEMM over gathered
patches (:func:`conv_im2col`; with a ResNet's many channels and small images this beat the GEMM
over taps of :func:`rsjax.models.layers.conv_taps` by 1.3x in the whole SNCA-CE step), with the
kernel gradient written out as one product over the rows of the output gradient and the patches
(:func:`_patch_gemm`); the max-pool keeps the index of the first maximum and routes the gradient
there (:func:`max_pool`). On a CPU, XLA's own
convolution and max-pool gradients are several times slower; both forms are equal in value and
gradient (tests/test_resnet_ops.py), and ``conv=flax.linen.Conv`` chooses XLA's on any backend.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax import lax

from rsjax.bank import l2_normalize
from rsjax.models.layers import gemm_forms, materialize, torch_uniform

ModuleDef = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")   # torchvision ResNet
fc_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")      # kaiming_normal_


def conv_im2col(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Any 2-D convolution (NHWC, HWIO kernel, explicit padding) as one GEMM over gathered patches.

    A strided convolution of a few channels (the stem: 7 x 7, stride 2, on RGB) gathers its
    patches as plain slices of stride-blocks (:func:`_column_block_patches`): 28 slices of 6
    contiguous values instead of 49 strided slices of 3, which cost more than the GEMM itself."""
    kh, kw, cin, _ = kernel.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    if (sh > 1 or sw > 1) and (kh > sh or kw > sw) and cin * sw <= _BLOCK_MAX_CHANNELS:
        cols, kernel = _column_block_patches(xp, kernel, sh, sw, ho, wo)
    else:
        cols = [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return _patch_gemm(patches, kernel)


@jax.custom_vjp
def _patch_gemm(p: jax.Array, w: jax.Array) -> jax.Array:
    """``patches (B, Ho, Wo, K) @ kernel (kh, kw, Cin, Cout)`` flattened to ``(K, Cout)``.

    The kernel gradient ``patches^T @ g`` contracts both operands over the B Ho Wo rows. Left to
    autodiff, XLA:CPU transposed ``g`` inside the BatchNorm-backward fusion, an untiled strided
    copy (13 ms for 4 MB in the 64 px step). It is written here as a ``dot_general`` that
    contracts the rows of ``g`` and of the patches as they lie, giving ``(Cout, K)``; XLA hands
    it to Eigen, which reads a transposed operand in its packing. (Written over the 4-D arrays,
    contracting B, Ho and Wo at once, XLA canonicalises it back into the transposed copy.) Where
    the kernel gradient outgrows its operands it is computed as ``(K, Cout)`` instead
    (:func:`_kernel_major`). A long contraction (the stem: 65 536 rows at 64 px) is split into
    batches of at least :data:`_DW_ROWS` rows, summed afterwards. This replaced ``g^T`` made by an identity GEMM
    (:func:`rsjax.models.layers.transpose_by_gemm`) followed by XLA's GEMM. Alone, jitted, on the
    2-core Xeon, kernel transposition included: the stem's kernel gradient 7.7 against 14.7 ms,
    layer1's 9.5 against 10.7 ms and layer4's 3.8 against 4.4 ms. In the SNCA-CE(MB) step at
    64 px, the split of the stem alone was worth about 1% (benchmarks/README.md)."""
    return p @ w.reshape(-1, w.shape[-1])


def _patch_gemm_fwd(p, w):
    return _patch_gemm(p, w), (p, w)


_DW_ROWS = 16384   # the kernel gradient's contraction is split while every part keeps this many rows


def _row_batches(rows: int) -> int:
    n = 1
    while rows % (2 * n) == 0 and rows // (2 * n) >= _DW_ROWS:
        n *= 2
    return n


def _patch_gemm_bwd(res, g):
    p, w = res
    kh, kw, cin, cout = w.shape
    k = p.shape[-1]
    n = _row_batches(g.size // cout)
    gb, pb = g.reshape(n, -1, cout), p.reshape(n, -1, k)
    dp = lax.dot_general(g, w.reshape(-1, cout), (((3,), (1,)), ((), ())))    # (B, Ho, Wo, K)
    if _kernel_major(gb.shape[1], k, cout):
        dw = lax.dot_general(pb, gb, (((1,), (1,)), ((0,), (0,)))).sum(axis=0)   # (K, Cout)
        return dp, dw.reshape(kh, kw, cin, cout)
    dw_t = lax.dot_general(gb, pb, (((1,), (1,)), ((0,), (0,)))).sum(axis=0)   # (Cout, K)
    return dp, dw_t.reshape(cout, kh, kw, cin).transpose(1, 2, 3, 0)


def _kernel_major(rows: int, k: int, cout: int) -> bool:
    """Whether the kernel gradient is computed as ``(K, Cout)``, the kernel's own layout, rather than
    ``(Cout, K)`` and transposed: when it is at least as large as the operands it is computed from
    (``rows (K + Cout) <= K Cout``: layer4 at 64 px, 256 rows). Its transposed reads (by the
    gradient norm and the SGD update) then cost more than Eigen's slower product in that
    orientation saves: the SNCA-CE(MB) step at 64 px took 0.956-0.975 of the time with layer4's
    kernel gradients in HWIO; elsewhere (layer1, 16 384 rows) the other orientation is faster
    (benchmarks/README.md)."""
    return rows * (k + cout) <= k * cout


_patch_gemm.defvjp(_patch_gemm_fwd, _patch_gemm_bwd)


_BLOCK_MAX_CHANNELS = 16   # the stride-block gathering pays while stride * Cin channels stay few


def _column_block_patches(xp: jax.Array, kernel: jax.Array, sh: int, sw: int, ho: int, wo: int):
    """Patches of a (sh, sw)-strided convolution of a padded NHWC input without strided slices.

    Viewing the input as ``(B, rows / sh, sh, columns / sw, sw * Cin)`` (a free reshape), input row
    ``sh (o + u) + v`` is block row ``o + u`` at offset ``v``, and ``sw`` neighbouring columns are one
    contiguous run of ``sw * Cin`` values, so ``out[o] = sum_(u, v, u', v') xp[s o + s u + v] w[s u + v]``
    is a GEMM over the ``kh * ceil(kw/sw)`` plain slices with ``s u + v < kh`` (kernel rows past kh
    would only meet zero weights and are left out; columns past kw get zero weights, within a run).
    Returns the slices and the kernel reshaped to match their order (u, v, u', v', Cin)."""
    b, hp, wp, cin = xp.shape
    kh, kw, _, cout = kernel.shape
    uh, uw = -(-kh // sh), -(-kw // sw)
    hs, ws = max(-(-hp // sh), ho + uh - 1), max(-(-wp // sw), wo + uw - 1)
    xp = jnp.pad(xp, ((0, 0), (0, hs * sh - hp), (0, ws * sw - wp), (0, 0)))
    blocks = xp.reshape(b, hs, sh, ws, sw * cin)
    cols = [blocks[:, u:u + ho, v, t:t + wo, :] for u in range(uh) for v in range(sh) if sh * u + v < kh
            for t in range(uw)]
    k = jnp.pad(kernel, ((0, 0), (0, uw * sw - kw), (0, 0), (0, 0)))
    return cols, k


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
    window, as XLA's and PyTorch's do; the backward pass interleaves stride x stride planes of
    shifted, masked output gradients instead of XLA's slow select-and-scatter on CPU (or strided
    pads, which were 2.5x slower again in the SNCA-CE step)."""
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
    """Each padded input row q = s a + b receives from the taps i = b + s m of outputs a - m, so
    the gradient is built as s x s planes of shifted, masked output gradients (no strided
    scatter) and then interleaved: ``dx[s a + b] = plane_b[a]``, along rows and columns.

    ``arg`` and ``g`` are materialised first (:func:`rsjax.models.layers.materialize`): left to
    XLA:CPU, both were recomputed inside the interleave for every plane that reads them (the
    argmax from the padded input, ``g`` from the next convolution's col2im). The SNCA-CE(MB) step
    at 64 px takes 0.965 of its time without this (2-core Xeon; benchmarks/README.md)."""
    arg, (_, h, w, _) = res
    arg, g = materialize(arg), materialize(g)
    zero = jnp.zeros((), g.dtype)
    ho, wo = g.shape[1:3]
    ah, aw = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)   # planes' rows / columns

    def planes(taps, axis, n_in, n_out):
        """taps[i] (length n_in along ``axis``) -> s planes: plane_b = sum_m taps[b + s m] shifted by m."""
        out = []
        for b in range(s):
            acc = None
            for m, i in enumerate(range(b, k, s)):
                cfg = [(0, 0, 0)] * g.ndim
                cfg[axis] = (m, n_out - n_in - m, 0)
                t = lax.pad(taps[i], zero, cfg)
                acc = t if acc is None else acc + t
            out.append(acc if acc is not None else jnp.zeros(taps[0].shape[:axis] + (n_out,) + taps[0].shape[axis + 1:], g.dtype))
        return out

    masked = [[jnp.where(arg == i * k + j, g, zero) for j in range(k)] for i in range(k)]
    cols = [planes(row, 2, wo, aw) for row in masked]                 # cols[i][bc]: (B, Ho, Aw, C)
    grid = [planes([cols[i][bc] for i in range(k)], 1, ho, ah) for bc in range(s)]   # grid[bc][br]
    dx = jnp.stack([jnp.stack(grid[bc], axis=0) for bc in range(s)], axis=0)   # (bc, br, B, Ah, Aw, C)
    b_, c_ = g.shape[0], g.shape[-1]
    dx = dx.transpose(2, 3, 1, 4, 0, 5).reshape(b_, ah * s, aw * s, c_)
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
      conv: the convolution module class used for every convolution; ``None``: :class:`Conv`
        on CPU, ``flax.linen.Conv`` elsewhere (:func:`rsjax.models.layers.gemm_forms`).
      dtype: computation type of the convolutions, BatchNorm and FC layers (parameters stay
        float32; ``bfloat16`` is mixed precision); the embedding and logits are float32.

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
    conv: ModuleDef | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv_cls = self.conv or (Conv if gemm_forms() else nn.Conv)
        conv = partial(conv_cls, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
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
