"""MS2A-Net (Rafiezadeh Shahi et al., 2023): multiscale spatial + spectral-association autoencoder.

Symbols follow the paper: M' is the 36-channel multiscale spatial code (k-means runs on it),
SPF the spatial feature map, F the local spatial features of the spectral stream, SA the
D x d3 spectral-association matrix and SAF = X SA the spectral features. The input is one
whole scene, ``(1, H, W, D)`` in NHWC, each band min-max scaled to [0, 1].

Inside, the network runs channels first (``CNHW``: channels, batch, height, width). The four
convolutions that read the scene (the three dilated 5 x 5 ones of the spatial stream and the
3 x 3 one of the spectral stream) are one banded GEMM (:func:`~rsjax.models.layers.conv_same_multi`),
and BatchNorm reduces contiguous planes (on a GPU or TPU these convolutions are XLA's own, the
dilated ones computed over polyphase sub-images: :func:`~rsjax.models.layers.conv_form`). The
streams take and return CNHW arrays; :class:`MS2ANet` takes NHWC (or a :class:`PreparedScene`)
and returns NHWC, plus the CNHW tensors the loss needs under ``out["cnhw"]``.

What depends on the scene only (its CNHW copy, its softmax over bands, its band mean) is a
:class:`PreparedScene`: :func:`rsjax.train.hsi.train_chunk` computes it once per chunk instead
of once per iteration.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.layers import Conv, ConvParams, batch_norm, conv_same_multi, transpose_by_gemm

ABLATIONS = ("A1", "A2", "A3")  # A1 spectral stream only, A2 spatial only, A3 both (the paper's model)


@flax.struct.dataclass
class PreparedScene:
    """The loop-invariant arrays of a scene ``x`` (N, H, W, D): ``cnhw`` (D, N, H, W),
    ``soft`` the softmax over bands (N, D, H*W) and ``band_mean`` (N, H, W)."""
    cnhw: jax.Array
    soft: jax.Array
    band_mean: jax.Array


def prepare_scene(x: jax.Array) -> PreparedScene:
    n, h, w, d = x.shape
    pixels = x.reshape(n * h * w, d)          # bands contiguous: the softmax reduces along rows
    cnhw = transpose_by_gemm(pixels).reshape(d, n, h, w)
    soft = transpose_by_gemm(jax.nn.softmax(pixels, axis=-1)).reshape(d, n, h * w).transpose(1, 0, 2)  # free for N = 1
    return PreparedScene(cnhw=cnhw, soft=soft, band_mean=x.mean(-1))


def _softmax_few(a: jax.Array, axis: int) -> jax.Array:
    """Softmax over a short axis (a handful of channels) with elementwise ops only: no reduction
    kernel for three numbers per pixel. Same values as ``jax.nn.softmax``."""
    parts = [jnp.take(a, i, axis=axis) for i in range(a.shape[axis])]
    top = parts[0]
    for p in parts[1:]:
        top = jnp.maximum(top, p)
    exps = [jnp.exp(p - jax.lax.stop_gradient(top)) for p in parts]
    total = exps[0]
    for e in exps[1:]:
        total = total + e
    return jnp.stack([e / total for e in exps], axis=axis)


def _bias(y, b):
    return y + b.astype(y.dtype)[:, None, None, None]


class MultiscaleSpatialStream(nn.Module):
    """Three dilated k x k convolutions (d1 filters each) + BN + ReLU, concatenated into M' (CNHW).

    The convolutions read the same input and run as one GEMM: :meth:`convs` gives their
    parameters, :class:`MS2ANet` adds the spectral stream's convolution to that GEMM and passes
    the outputs (without bias) in as ``conv_out``."""
    d1: int = 12
    dilations: Sequence[int] = (1, 2, 4)
    kernel_size: int = 5

    def setup(self):
        for rate in self.dilations:
            setattr(self, f"conv_l{rate}", ConvParams(self.d1, self.kernel_size))
            setattr(self, f"bn_l{rate}", batch_norm(None, axis=0))

    def convs(self, in_features: int):
        """[(kernel, bias, dilation)] of the convolutions."""
        return [(*getattr(self, f"conv_l{rate}")(in_features), rate) for rate in self.dilations]

    def __call__(self, x, train: bool = True, *, conv_out):
        convs = self.convs(x.shape[0])
        maps = [nn.relu(getattr(self, f"bn_l{rate}")(_bias(y, b), use_running_average=not train))
                for y, (_, b, rate) in zip(conv_out, convs)]
        return jnp.concatenate(maps, axis=0)


SPF_ODD = ("crop", "resize")   # how SPF returns to H x W when H or W is odd


class SPF(nn.Module):
    """M' -> 1x1 stride-2 conv (d2 filters) -> bilinear upsampling back to H x W -> BN -> ReLU.

    The paper upsamples x2, which overshoots an odd H or W by one (the authors' code then fails).
    ``odd="crop"`` upsamples x2 and drops the extra row/column; ``odd="resize"`` resizes
    bilinearly straight to H x W (PyTorch's ``nn.Upsample(size=(H, W))``). Both equal the x2
    upsampling for even sizes."""
    d2: int = 3
    odd: str = "crop"
    dtype: Any = jnp.float32      # of the convolution (see MS2ANet.dtype)

    @nn.compact
    def __call__(self, m, train: bool = True):
        if self.odd not in SPF_ODD:
            raise ValueError(f"odd must be one of {SPF_ODD}, got {self.odd!r}")
        _, b, h, w = m.shape
        y = Conv(self.d2, 1, stride=2, padding="VALID", layout="CNHW", name="conv")(m.astype(self.dtype))
        y = y.astype(jnp.float32)                                            # ceil(H/2) x ceil(W/2)
        hh, ww = y.shape[2:]
        if self.odd == "resize":
            y = jax.image.resize(y, (self.d2, b, h, w), "bilinear")          # half-pixel centres, as PyTorch
        else:
            y = jax.image.resize(y, (self.d2, b, 2 * hh, 2 * ww), "bilinear")
            y = y[:, :, :h, :w]                                              # odd H or W: drop the extra row/column
        return nn.relu(batch_norm(train, name="bn", axis=0)(y))


@jax.custom_vjp
def _weigh_bands(sa: jax.Array, x_flat: jax.Array) -> jax.Array:
    """SAF = ``sa^T @ x_flat``: (N, D, d3) and (N, D, pixels) -> (N, d3, pixels).

    Its gradient with respect to SA is computed as ``x_flat @ dSAF^T`` (D x d3), the scene on the
    left. Autodiff gives ``dSAF @ x_flat^T`` (d3 x D, then transposed), and XLA:CPU's GEMM runs a
    product whose left operand has only d3 rows against a long contraction three to five times
    slower (3.8-6.6 against 1.2-1.35 ms at Trento's 99 600 pixels, alone, on a 2-core Xeon)."""
    return jnp.swapaxes(sa, 1, 2) @ x_flat


def _weigh_bands_fwd(sa, x_flat):
    return _weigh_bands(sa, x_flat), (sa, x_flat)


def _weigh_bands_bwd(res, g):
    sa, x_flat = res
    return x_flat @ jnp.swapaxes(g, 1, 2), sa @ g


_weigh_bands.defvjp(_weigh_bands_fwd, _weigh_bands_bwd)


class SpectralAssociationStream(nn.Module):
    """F = softmax_c(ReLU(BN(conv3x3(X)))); SA = softmax_D(X)^T F; SAF = X SA.

    ``x`` is CNHW; ``x_soft`` (N, D, H*W) is the softmax of X over bands
    (:class:`PreparedScene`) and ``conv_out`` the 3 x 3 convolution of X without bias (see
    :meth:`convs`), both computed by :class:`MS2ANet`."""
    d3: int = 3

    def setup(self):
        self.conv = ConvParams(self.d3, 3)
        self.bn = batch_norm(None, axis=0)

    def convs(self, in_features: int):
        return [(*self.conv(in_features), 1)]

    def __call__(self, x, train: bool = True, *, x_soft, conv_out):
        d, b, h, w = x.shape
        (_, bias, _), = self.convs(d)
        f = nn.relu(self.bn(_bias(conv_out, bias), use_running_average=not train))
        # per image: (N, C, pixels), a free reshape for N = 1, so the products below are plain GEMMs
        per_image = lambda a: a.reshape(a.shape[0], b, h * w).transpose(1, 0, 2)
        f = _softmax_few(per_image(f), axis=1)                              # F, per pixel over channels
        x_flat = per_image(x)
        sa = x_soft @ f.transpose(0, 2, 1)                                   # SA: D x d3
        saf = _weigh_bands(sa, x_flat)                                       # SAF: d3 x pixels
        return saf.transpose(1, 0, 2).reshape(self.d3, b, h, w)


class MS2ANet(nn.Module):
    """The whole autoencoder. Takes the scene NHWC (or prepared, :func:`prepare_scene`) and returns
    a dict with ``recon`` (R), ``code`` (the clustering features: M' for A2/A3, SAF for A1),
    ``m_prime`` (M', used by the spectral mean constraint), all NHWC, and ``cnhw``: R and M'
    channels first, for :func:`ms2anet_loss`.

    ``dtype`` is the computation type of the convolutions (``jnp.bfloat16`` for mixed precision,
    as ``torch.autocast``): their inputs and kernels are cast to it and their outputs back to
    float32; parameters, BatchNorm, the SA products and the loss stay float32."""
    bands: int
    d1: int = 12
    d2: int = 3
    d3: int = 3
    dilations: Sequence[int] = (1, 2, 4)
    kernel_size: int = 5
    ablation: str = "A3"
    spf_odd: str = "crop"         # odd H or W in SPF: "crop" the x2 upsampling, or "resize" to H x W
    dtype: Any = jnp.float32      # of the convolutions

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        scene = x if isinstance(x, PreparedScene) else prepare_scene(x)
        x = scene.cnhw
        spatial = MultiscaleSpatialStream(self.d1, tuple(self.dilations), self.kernel_size, name="spatial")
        spectral = SpectralAssociationStream(self.d3, name="spectral") if self.ablation in ("A1", "A3") else None
        # every convolution that reads X, as one GEMM
        convs = spatial.convs(x.shape[0]) + (spectral.convs(x.shape[0]) if spectral is not None else [])
        ys = conv_same_multi(x.astype(self.dtype), tuple(k.astype(self.dtype) for k, _, _ in convs),
                             tuple(d for _, _, d in convs))
        ys = tuple(y.astype(jnp.float32) for y in ys)
        nsp = len(self.dilations)
        m_prime = spatial(x, train, conv_out=ys[:nsp])
        parts = []
        if spectral is not None:
            parts.append(spectral(x, train, x_soft=scene.soft, conv_out=ys[nsp]))
        if self.ablation in ("A2", "A3"):
            parts.append(SPF(self.d2, self.spf_odd, self.dtype, name="spf")(m_prime, train))
        ef = jnp.concatenate(parts, axis=0).astype(self.dtype)
        recon = Conv(self.bands, 3, layout="CNHW", name="dec_conv")(ef).astype(jnp.float32)
        recon = nn.relu(batch_norm(train, name="dec_bn", axis=0)(recon))
        code = parts[0] if self.ablation == "A1" else m_prime
        nhwc = lambda a: a.transpose(1, 2, 3, 0)
        return {"recon": nhwc(recon), "code": nhwc(code), "m_prime": nhwc(m_prime),
                "cnhw": {"recon": recon, "m_prime": m_prime}}


def _channel_mean(a: jax.Array) -> jax.Array:
    """Mean over axis 0 as a matrix-vector product (one pass, no reduction kernel over a strided axis)."""
    return jnp.tensordot(jnp.full((a.shape[0],), 1.0 / a.shape[0], a.dtype), a, axes=(0, 0))


def ms2anet_loss(x, out, lam: float):
    """mean((X - R)^2) + lambda * mean((mean_c M' - mean_b X)^2)  (Eq. 5 with the authors' MSE scaling).

    ``x`` is the NHWC scene, or its :class:`PreparedScene` (then the loss is taken on the CNHW
    tensors ``out["cnhw"]``, without transposes)."""
    if isinstance(x, PreparedScene):
        rec = jnp.mean((x.cnhw - out["cnhw"]["recon"]) ** 2)
        mean_term = jnp.mean((_channel_mean(out["cnhw"]["m_prime"]) - x.band_mean) ** 2)
    else:
        rec = jnp.mean((x - out["recon"]) ** 2)
        mean_term = jnp.mean((out["m_prime"].mean(-1) - x.mean(-1)) ** 2)
    return rec + lam * mean_term
