"""The SNCA memory bank: an ``N x D`` array holding one L2-normalised embedding per training image.

Row ``i`` of the bank belongs to training image ``i`` (the ``idx`` a batch carries). The bank
is read before it is written in the same step: the SNCA logits of a batch are computed from
the incoming bank, then the batch's rows are replaced (see :mod:`rsjax.train.embed`).

Two ways of writing rows, one per optimisation scheme of the paper:

- MB (memory bank, Eq. 14): ``bank[idx] = normalise(m * bank[idx] + (1 - m) * f)``, the
  proximal (momentum) update of the stored feature with the online feature;
  :func:`momentum_write`.
- MU (momentum update, Eq. 16): the rows are overwritten by the normalised features of the
  momentum (auxiliary) encoder; :func:`overwrite`.

All functions are pure: they return a new bank. Under ``jit`` with the bank donated the
scatter happens in place.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along ``axis``, as ``torch.nn.functional.normalize``.

    Written with ``rsqrt(max(||x||^2, eps^2))`` so the gradient stays finite at ``x = 0``.
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def init_bank(key: jax.Array, n: int, dim: int, normalise: bool = False,
              dtype=jnp.float32) -> jax.Array:
    """A fresh ``n x dim`` bank drawn uniformly from ``[-s, s]``, ``s = 1 / sqrt(dim / 3)``.

    This is the authors' initialisation (``LinearAverage``: ``rand * 2s - s``), which leaves
    the rows unnormalised (their norm is about 1: each entry has variance ``s^2 / 3 = 1/dim``).
    ``normalise=True`` additionally L2-normalises every row, so the bank holds unit vectors
    from the first step; the reference notes do not normalise, so that is off by default.
    """
    s = 1.0 / (dim / 3.0) ** 0.5
    bank = jax.random.uniform(key, (n, dim), dtype, minval=-s, maxval=s)
    return l2_normalize(bank) if normalise else bank


def momentum_write(bank: jax.Array, idx: jax.Array, f: jax.Array, m: jax.Array | float) -> jax.Array:
    """MB update (Eq. 14): ``bank[idx] = normalise(m * bank[idx] + (1 - m) * f)``.

    ``f`` (``B x D``) is the batch's normalised embedding; its gradient is stopped. ``m`` may be
    a traced scalar (it changes with the epoch, see :func:`bank_momentum`). ``idx`` must not
    repeat within a batch (batches are drawn without replacement) and must be rows of the bank,
    0 .. N-1: under jit nothing checks them, and JAX drops writes past the last row.
    """
    f = jax.lax.stop_gradient(f).astype(bank.dtype)
    m = jnp.asarray(m, bank.dtype)
    rows = l2_normalize(m * bank[idx] + (1.0 - m) * f)
    return bank.at[idx].set(rows, unique_indices=True)


def overwrite(bank: jax.Array, idx: jax.Array, f_hat: jax.Array) -> jax.Array:
    """MU update (Eq. 16): ``bank[idx] = f_hat``, the momentum encoder's normalised features.
    ``idx`` as in :func:`momentum_write`."""
    f_hat = jax.lax.stop_gradient(f_hat).astype(bank.dtype)
    return bank.at[idx].set(f_hat, unique_indices=True)


def bank_momentum(epoch: jax.Array | int, m: float = 0.5, boundaries: Sequence[int] = (),
                  values: Sequence[float] = ()) -> jax.Array:
    """The MB momentum at ``epoch`` (0-based): ``m`` before ``boundaries[0]``, then ``values[k]``
    from epoch ``boundaries[k]`` on. The paper keeps ``m = 0.5`` (no boundaries); the authors'
    ``adjust_memory_update_rate`` raises it to 0.8 at epoch 80 and 0.9 at epoch 120
    (``boundaries=(80, 120), values=(0.8, 0.9)``). ``epoch`` may be traced, so a changing epoch
    does not recompile."""
    if len(boundaries) != len(values):
        raise ValueError(f"bank momentum schedule: {len(boundaries)} boundaries but {len(values)} values")
    if list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"bank momentum schedule: boundaries {tuple(boundaries)} must be distinct epochs in "
                         "ascending order, each with its value, e.g. boundaries=(80, 120), values=(0.8, 0.9).")
    epoch = jnp.asarray(epoch)
    out = jnp.asarray(m, jnp.float32)
    for b, v in zip(boundaries, values):
        out = jnp.where(epoch >= b, jnp.float32(v), out)
    return out
