"""MS2A-Net in PyTorch (eager, NCHW): the same math as ``rsjax.models.ms2anet``, for the speed
benchmark and for ``experiments/reference_torch.py`` (the reference math run from PyTorch's own
initialisation).

It mirrors tests/test_ms2anet.py's functional reference as an ``nn.Module`` with PyTorch's
default layers (Conv2d, BatchNorm2d in training mode) and can load rsjax's parameters, so the
two frameworks can be checked to compute the same loss before they are timed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchMS2ANet(nn.Module):
    def __init__(self, bands: int, d1: int = 12, d2: int = 3, d3: int = 3, dilations=(1, 2, 4), kernel_size: int = 5,
                 spf_odd: str = "crop"):
        super().__init__()
        self.dilations, self.spf_odd = tuple(dilations), spf_odd
        k = kernel_size
        self.spatial = nn.ModuleList(nn.Conv2d(bands, d1, k, padding=r * (k // 2), dilation=r) for r in self.dilations)
        self.spatial_bn = nn.ModuleList(nn.BatchNorm2d(d1, eps=1e-5, momentum=0.1) for _ in self.dilations)
        self.spf_conv = nn.Conv2d(d1 * len(self.dilations), d2, 1, stride=2)
        self.spf_bn = nn.BatchNorm2d(d2)
        self.spec_conv = nn.Conv2d(bands, d3, 3, padding=1)
        self.spec_bn = nn.BatchNorm2d(d3)
        self.dec_conv = nn.Conv2d(d2 + d3, bands, 3, padding=1)
        self.dec_bn = nn.BatchNorm2d(bands)

    def forward(self, x):                                           # x: 1, D, H, W
        b, d, h, w = x.shape
        m = torch.cat([F.relu(bn(conv(x))) for conv, bn in zip(self.spatial, self.spatial_bn)], 1)   # M'
        y = self.spf_conv(m)
        if self.spf_odd == "resize":                                # nn.Upsample(size=(H, W))
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        else:                                                       # x2, extra row/column dropped
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)[:, :, :h, :w]
        spf = F.relu(self.spf_bn(y))
        f = F.relu(self.spec_bn(self.spec_conv(x))).reshape(b, -1, h * w)
        f = torch.softmax(f, dim=1)                                 # F: per pixel over channels
        x_flat = x.reshape(b, d, h * w)
        sa = torch.softmax(x_flat, dim=1) @ f.transpose(1, 2)       # SA: D x d3
        saf = (sa.transpose(1, 2) @ x_flat).reshape(b, -1, h, w)   # SAF
        recon = F.relu(self.dec_bn(self.dec_conv(torch.cat([saf, spf], 1))))
        return recon, m

    def loss(self, x, lam: float, amp_dtype=None):
        """The MS2A-Net loss; ``amp_dtype`` runs the network under ``torch.autocast`` (the loss
        itself stays float32)."""
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            recon, m = self(x)
        return F.mse_loss(recon.float(), x) + lam * F.mse_loss(m.float().mean(1), x.mean(1))

    @torch.no_grad()
    def load_rsjax(self, params) -> "TorchMS2ANet":
        """Copy an rsjax MS2ANet parameter tree (HWIO kernels) into this module."""
        t = lambda a: torch.from_numpy(np.array(a, np.float32))

        def conv(mod, p):
            mod.weight.copy_(t(p["kernel"]).permute(3, 2, 0, 1))
            mod.bias.copy_(t(p["bias"]))

        def bn(mod, p):
            mod.weight.copy_(t(p["scale"]))
            mod.bias.copy_(t(p["bias"]))

        for i, r in enumerate(self.dilations):
            conv(self.spatial[i], params["spatial"][f"conv_l{r}"])
            bn(self.spatial_bn[i], params["spatial"][f"bn_l{r}"])
        conv(self.spf_conv, params["spf"]["conv"])
        bn(self.spf_bn, params["spf"]["bn"])
        conv(self.spec_conv, params["spectral"]["conv"])
        bn(self.spec_bn, params["spectral"]["bn"])
        conv(self.dec_conv, params["dec_conv"])
        bn(self.dec_bn, params["dec_bn"])
        return self


class TorchTrainer:
    """One training iteration as rsjax's train_step: loss of the incoming parameters, backward,
    Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8), keeping a copy of the lowest-loss parameters.

    On CPU the loss is compared on the host; on a GPU the lowest loss and its parameters are kept
    on the device (``torch.where``), so an iteration does not wait for the GPU, as rsjax's does
    not. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the forward pass under ``torch.autocast``."""

    def __init__(self, model: TorchMS2ANet, lr: float = 1e-3, lam: float = 0.1, amp_dtype=None):
        self.model, self.lam, self.amp_dtype = model.train(), lam, amp_dtype
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
        device = next(model.parameters()).device
        self.on_host = device.type == "cpu"
        self.best_loss = float("inf") if self.on_host else torch.tensor(float("inf"), device=device)
        self.best = [p.detach().clone() for p in model.parameters()]

    def step(self, x) -> float | torch.Tensor:
        """One iteration; returns the loss (a float on CPU, a 0-d device tensor on a GPU)."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.loss(x, self.lam, self.amp_dtype)
        loss.backward()
        with torch.no_grad():
            if self.on_host:
                value = float(loss.detach())
                if value < self.best_loss:
                    self.best_loss = value
                    for b, p in zip(self.best, self.model.parameters()):
                        b.copy_(p)
            else:
                value = loss.detach()
                better = value < self.best_loss
                self.best_loss = torch.where(better, value, self.best_loss)
                for b, p in zip(self.best, self.model.parameters()):
                    b.copy_(torch.where(better, p, b))
        self.opt.step()
        return value
