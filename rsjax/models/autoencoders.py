"""The paper's deep baselines AE and CAE, each with a 36-feature latent code for k-means.

AE is a per-pixel (spectral only) fully connected autoencoder; CAE a convolutional one whose code
sees 5 x 5 neighbourhoods (two 3 x 3 convolutions). Both return ``recon``, ``code`` and ``m_prime``
as :class:`~rsjax.models.ms2anet.MS2ANet` does and train with the plain reconstruction loss.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rsjax.models.layers import Conv, Dense


class AE(nn.Module):
    bands: int
    hidden: Sequence[int] = (128, 64)
    latent: int = 36

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = x
        for i, n in enumerate(self.hidden):
            h = nn.relu(Dense(n, name=f"enc{i}")(h))
        code = Dense(self.latent, name="code")(h)
        h = code
        for i, n in enumerate(reversed(self.hidden)):
            h = nn.relu(Dense(n, name=f"dec{i}")(h))
        recon = Dense(self.bands, name="out")(h)
        return {"recon": recon, "code": code, "m_prime": code}


class CAE(nn.Module):
    bands: int
    hidden: int = 64
    latent: int = 36

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.relu(Conv(self.hidden, 3, name="enc0")(x))
        code = Conv(self.latent, 3, name="code")(h)
        h = nn.relu(Conv(self.hidden, 3, name="dec0")(code))
        recon = Conv(self.bands, 3, name="out")(h)
        return {"recon": recon, "code": code, "m_prime": code}
