"""ResNet18 with the SNCA-CE heads and the SNCA-CE(MB / MU) training step in PyTorch (eager, NCHW),
the same math as ``rsjax.models.resnet`` and ``rsjax.train.embed``, for the speed benchmark.

The network is torchvision's ResNet18 written out (torchvision is not a dependency): 7x7
stride-2 stem convolution, BatchNorm, ReLU, 3x3 stride-2 max-pool, four stages of two basic
blocks (64, 128, 256, 512 filters), global average pooling, then the authors' heads: FC1
512 -> D, the embedding ``f = normalize(FC1)``, FC2 D -> C on the unnormalised FC1 output.
Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
...) plus ``fc1``/``fc2``, so ``state_dict()`` converts into rsjax variables with
:func:`rsjax.models.convert.torch_resnet_to_flax` and both frameworks can start from the same weights.

:class:`TorchSNCATrainer` is one training step as rsjax's: forward in training mode, loss
``CE + lambda * SNCA`` against the incoming ``N x D`` bank (own row excluded, temperature
sigma), backward, SGD (Nesterov momentum 0.9, weight decay 1e-4 on every parameter), then the
bank rows of the batch are written: MB ``bank[idx] = normalize(m bank[idx] + (1 - m) f)``;
MU a momentum encoder (its own batch statistics) embeds the batch, its features overwrite
``bank[idx]``, then its parameters move ``theta_ema = m theta_ema + (1 - m) theta`` (m = 0.999).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class TorchResNet18Cls(nn.Module):
    """ResNet18 (ImageNet layout) + FC1 512 -> ``dim`` + FC2 ``dim`` -> ``num_classes``.

    ``forward(x)`` (NCHW float) returns ``(f, logits)``: the L2-normalised FC1 output and FC2 of
    the unnormalised one. Initialisation is torchvision's (Kaiming-normal ``fan_out`` convolutions,
    BatchNorm 1 / 0) with Kaiming-normal FC weights, as rsjax's.
    """

    def __init__(self, dim: int = 128, num_classes: int = 21, stage_sizes=(2, 2, 2, 2), num_filters: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, num_filters, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = num_filters
        self.layers = []
        for i, n in enumerate(stage_sizes):
            planes = num_filters * 2 ** i
            blocks = [BasicBlock(inplanes, planes, 1 if i == 0 else 2)]
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.layers.append(f"layer{i + 1}")
            inplanes = planes
        self.fc1 = nn.Linear(inplanes, dim)
        self.fc2 = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        for name in self.layers:
            x = getattr(self, name)(x)
        v = self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return F.normalize(v.float()), self.fc2(v).float()      # float32 heads under autocast, as rsjax


def snca_loss(f, labels, idx, bank, bank_labels, sigma: float):
    """``-(1/B) sum_i log p_i``, ``p_i`` the softmax mass (temperature sigma) of the bank rows of
    sample i's class, its own row ``idx[i]`` excluded; samples without another same-class row add 0.
    The bank is a buffer (no gradient). Log space, as :func:`rsjax.losses.snca_loss`."""
    logits = f @ bank.detach().t() / sigma                                   # B x N
    n = bank.shape[0]
    not_self = torch.arange(n, device=f.device)[None, :] != idx[:, None]
    pos = (bank_labels[None, :] == labels[:, None]) & not_self
    has_pos = pos.any(1)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype)
    lse_all = torch.logsumexp(torch.where(not_self, logits, neg_inf), 1)
    # rows without a positive get a finite dummy row, so no NaN reaches the gradient
    safe_pos = torch.where(pos, logits, torch.where(has_pos[:, None], neg_inf, torch.zeros((), dtype=logits.dtype)))
    log_p = torch.logsumexp(safe_pos, 1) - lse_all
    return -torch.where(has_pos, log_p, torch.zeros((), dtype=log_p.dtype)).sum() / f.shape[0]


class TorchSNCATrainer:
    """One SNCA-CE training step in PyTorch eager, as ``rsjax.train.embed.make_step``.

    ``bank_update``: ``'mb'`` (momentum write with ``bank_m``, 0.5 at epoch 0) or ``'mu'``
    (momentum encoder with ``ema_m`` = 0.999). ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the
    networks under ``torch.autocast`` (mixed precision; the loss stays float32), as rsjax's
    ``dtype='bfloat16'``. The model and tensors may live on any device (CUDA for the GPU run).
    """

    def __init__(self, model: TorchResNet18Cls, bank: torch.Tensor, bank_labels: torch.Tensor, *,
                 bank_update: str = "mb", lr: float = 0.01, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 1e-4, sigma: float = 0.1, lam: float = 1.0, bank_m: float = 0.5,
                 ema_m: float = 0.999, amp_dtype: torch.dtype | None = None):
        if bank_update not in ("mb", "mu"):
            raise ValueError(f"bank_update {bank_update!r}: use 'mb' or 'mu'")
        self.model = model.train()
        self.bank, self.bank_labels = bank, bank_labels.long()
        self.bank_update, self.sigma, self.lam = bank_update, sigma, lam
        self.bank_m, self.ema_m = bank_m, ema_m
        self.amp_dtype = amp_dtype
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                                   weight_decay=weight_decay)
        self.ema = None
        if bank_update == "mu":
            self.ema = copy.deepcopy(model).train()
            for p in self.ema.parameters():
                p.requires_grad_(False)

    def step(self, images, labels, idx) -> torch.Tensor:
        """One step on a batch (NCHW float32 images, int64 labels and bank rows); returns the loss
        of the incoming parameters (a detached scalar tensor)."""
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            f, logits = self.model(images)
        loss = F.cross_entropy(logits, labels) + self.lam * snca_loss(
            f, labels, idx, self.bank, self.bank_labels, self.sigma)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            if self.bank_update == "mb":
                m = self.bank_m
                self.bank[idx] = F.normalize(m * self.bank[idx] + (1.0 - m) * f.detach())
            else:
                with self._autocast():
                    f_hat, _ = self.ema(images)
                self.bank[idx] = f_hat
                for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(p, 1.0 - self.ema_m)
        return loss.detach()

    def _autocast(self):
        return torch.autocast(self.bank.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
