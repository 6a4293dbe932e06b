"""MS2A-Net (Rafiezadeh Shahi et al., 2023): multiscale spatial + spectral-association autoencoder.

Symbols follow the paper: M' is the 36-channel multiscale spatial code (k-means runs on it),
SPF the spatial feature map, F the local spatial features of the spectral stream, SA the
D x d3 spectral-association matrix and SAF = X SA the spectral features. The input is one
whole scene, ``(1, H, W, D)`` in NHWC, each band min-max scaled to [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.layers import Conv, batch_norm

ABLATIONS = ("A1", "A2", "A3")  # A1 spectral stream only, A2 spatial only, A3 both (the paper's model)


class MultiscaleSpatialStream(nn.Module):
    """Three dilated k x k convolutions (d1 filters each) + BN + ReLU, concatenated into M'."""
    d1: int = 12
    dilations: Sequence[int] = (1, 2, 4)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x, train: bool = True):
        maps = []
        for i, rate in enumerate(self.dilations):
            y = Conv(self.d1, self.kernel_size, dilation=rate, name=f"conv_l{rate}")(x)
            maps.append(nn.relu(batch_norm(train, name=f"bn_l{rate}")(y)))
        return jnp.concatenate(maps, axis=-1)


class SPF(nn.Module):
    """M' -> 1x1 stride-2 conv (d2 filters) -> bilinear x2 upsampling cropped to H x W -> BN -> ReLU."""
    d2: int = 3

    @nn.compact
    def __call__(self, m, train: bool = True):
        b, h, w, _ = m.shape
        y = Conv(self.d2, 1, stride=2, padding="VALID", name="conv")(m)      # ceil(H/2) x ceil(W/2)
        hh, ww = y.shape[1:3]
        y = jax.image.resize(y, (b, 2 * hh, 2 * ww, self.d2), "bilinear")    # half-pixel centres, as PyTorch
        y = y[:, :h, :w]                                                     # odd H or W: drop the extra row/column
        return nn.relu(batch_norm(train, name="bn")(y))


class SpectralAssociationStream(nn.Module):
    """F = softmax_c(ReLU(BN(conv3x3(X)))); SA = softmax_D(X)^T F; SAF = X SA."""
    d3: int = 3

    @nn.compact
    def __call__(self, x, train: bool = True):
        b, h, w, d = x.shape
        f = nn.relu(batch_norm(train, name="bn")(Conv(self.d3, 3, name="conv")(x)))
        f = jax.nn.softmax(f.reshape(b, h * w, self.d3), axis=-1)           # F, per pixel over channels
        x_flat = x.reshape(b, h * w, d)
        x_soft = jax.nn.softmax(x_flat, axis=-1)                             # per pixel over bands
        sa = jnp.einsum("bpd,bpc->bdc", x_soft, f)                           # SA: D x d3
        saf = jnp.einsum("bpd,bdc->bpc", x_flat, sa)                         # SAF: pixels x d3
        return saf.reshape(b, h, w, self.d3)


class MS2ANet(nn.Module):
    """The whole autoencoder. Returns a dict with ``recon`` (R), ``code`` (the clustering features:
    M' for A2/A3, SAF for A1), ``m_prime`` (M', used by the spectral mean constraint)."""
    bands: int
    d1: int = 12
    d2: int = 3
    d3: int = 3
    dilations: Sequence[int] = (1, 2, 4)
    kernel_size: int = 5
    ablation: str = "A3"

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        m_prime = MultiscaleSpatialStream(self.d1, tuple(self.dilations), self.kernel_size, name="spatial")(x, train)
        parts = []
        if self.ablation in ("A1", "A3"):
            saf = SpectralAssociationStream(self.d3, name="spectral")(x, train)
            parts.append(saf)
        if self.ablation in ("A2", "A3"):
            parts.append(SPF(self.d2, name="spf")(m_prime, train))
        ef = jnp.concatenate(parts, axis=-1)
        recon = nn.relu(batch_norm(train, name="dec_bn")(Conv(self.bands, 3, name="dec_conv")(ef)))
        code = parts[0] if self.ablation == "A1" else m_prime
        return {"recon": recon, "code": code, "m_prime": m_prime}


def ms2anet_loss(x, out, lam: float):
    """mean((X - R)^2) + lambda * mean((mean_c M' - mean_b X)^2)  (Eq. 5 with the authors' MSE scaling)."""
    rec = jnp.mean((x - out["recon"]) ** 2)
    mean_term = jnp.mean((out["m_prime"].mean(-1) - x.mean(-1)) ** 2)
    return rec + lam * mean_term
