"""Losses of SNCA-CE and its baselines, as pure functions of arrays.

- :func:`snca_loss`: scalable neighbourhood component analysis against the memory bank
  (Eqs. 5-7 of the paper, with the authors' optional margin), in log space.
- :func:`cross_entropy`: softmax cross-entropy with integer labels (Eq. 9).
- :func:`contrastive_loss`: the pairwise contrastive term of D-CNN (Cheng et al. 2018; Eq. 1
  of the paper) over all pairs of the batch.
- :func:`triplet_loss`: the triplet loss (Eq. 3), batch-all or batch-hard over the batch.

Embeddings are the L2-normalised FC1 outputs. Each loss is a mean over the batch (or over
its pairs / triplets), so it does not depend on the batch size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row-wise ``log sum_{mask} exp(x)``; ``-inf`` (with a zero gradient) for empty rows.

    Returns the values and whether each row had any entry. Empty rows are computed on a
    dummy finite row and then replaced, so no NaN reaches the gradient (the double-where trick).
    """
    any_ = jnp.any(mask, axis=-1)
    safe = jnp.where(mask, x, jnp.where(any_[:, None], -jnp.inf, 0.0))
    lse = jax.nn.logsumexp(safe, axis=-1)
    return jnp.where(any_, lse, -jnp.inf), any_


def snca_log_prob(f: jax.Array, labels: jax.Array, idx: jax.Array, bank: jax.Array,
                  bank_labels: jax.Array, sigma: float, margin: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """``log p_i`` of SNCA for each sample of the batch, and whether it is defined.

    ``s = f @ bank^T / sigma`` (``B x N``); the sample's own bank row ``idx[i]`` is excluded
    (``p_ii = 0``); ``P_i`` is the mass ``sum exp(s_ij)`` of the rows with the sample's label,
    ``Q_i`` that of the others, and with the margin the positive mass is divided by
    ``exp(margin / sigma)`` in numerator and denominator alike (the authors' ``NCACrossEntropy``):
    ``p_i = (P_i / e^{margin/sigma}) / (Q_i + P_i / e^{margin/sigma})``.

    The second output is ``False`` for a sample with no same-class row in the bank besides its
    own (``p_i = 0``); those are left out of the loss, as the authors' code drops zero
    probabilities. The bank is not differentiated (it is a buffer, not a parameter).
    """
    bank = jax.lax.stop_gradient(bank)
    logits = (f @ bank.T) / sigma
    n = bank.shape[0]
    not_self = jnp.arange(n)[None, :] != idx[:, None]
    same = bank_labels[None, :] == labels[:, None]
    log_pos, has_pos = _masked_logsumexp(logits, same & not_self)
    log_neg, _ = _masked_logsumexp(logits, (~same) & not_self)
    log_pos = log_pos - margin / sigma
    log_p = log_pos - jnp.logaddexp(log_pos, log_neg)
    return jnp.where(has_pos, log_p, 0.0), has_pos


def snca_loss(f: jax.Array, labels: jax.Array, idx: jax.Array, bank: jax.Array,
              bank_labels: jax.Array, sigma: float, margin: float = 0.0) -> jax.Array:
    """SNCA loss of a batch against the memory bank: ``-(1/B) sum_i log p_i`` (Eq. 7).

    Args:
      f: ``B x D`` normalised embeddings of the batch.
      labels: ``B`` integer labels of the batch.
      idx: ``B`` bank rows of the batch's images (their index in the training set).
      bank: ``N x D`` stored embeddings of the training set.
      bank_labels: ``N`` labels of the bank rows.
      sigma: the temperature.
      margin: subtracted (divided by sigma) from the positive log-mass; 0 by default.

    Samples without any other same-class bank row contribute 0 (the sum is still divided by B).
    """
    log_p, _ = snca_log_prob(f, labels, idx, bank, bank_labels, sigma, margin)
    return -jnp.sum(log_p) / f.shape[0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``B x C`` logits with ``B`` integer labels (Eq. 9)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def pairwise_sq_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``||a_i - b_j||^2`` for all pairs, clipped at 0 against rounding."""
    sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(sq, 0.0)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` with gradient 0 (not inf) at ``x = 0``."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def contrastive_loss(f: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    """Contrastive loss over all pairs ``i < j`` of the batch (Eq. 1; D-CNN's metric term).

    A same-class pair costs ``d_ij^2``, a different-class pair ``max(0, margin - d_ij)^2``,
    with ``d_ij = ||f_i - f_j||`` the Euclidean distance of the embeddings (at most 2 for
    normalised ones); the result is the mean over the ``B (B - 1) / 2`` pairs.
    """
    b = f.shape[0]
    d2 = pairwise_sq_distances(f, f)
    same = labels[:, None] == labels[None, :]
    per_pair = jnp.where(same, d2, jnp.square(jax.nn.relu(margin - _safe_sqrt(d2))))
    upper = jnp.triu(jnp.ones((b, b), bool), k=1)
    return jnp.sum(jnp.where(upper, per_pair, 0.0)) / (b * (b - 1) / 2)


def triplet_loss(f: jax.Array, labels: jax.Array, margin: float = 0.2, mining: str = "all") -> jax.Array:
    """Triplet loss (Eq. 3) with squared Euclidean distances, over the triplets of the batch.

    ``mining='all'`` (batch-all, the default): the mean of
    ``max(0, d_ap - d_an + margin)`` over every valid triplet (anchor a, positive p != a of
    the same class, negative n of another class), zero-loss triplets included, as Eq. 3 sums
    them all. ``mining='hard'`` (batch-hard): per anchor, the farthest positive and the
    nearest negative, ``max(0, max_p d_ap - min_n d_an + margin)``, averaged over the anchors
    that have both. A batch without any valid triplet gives 0.
    """
    d2 = pairwise_sq_distances(f, f)
    b = f.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(b, dtype=bool)
    pos = same & ~eye
    neg = ~same
    if mining == "all":
        valid = pos[:, :, None] & neg[:, None, :]
        t = jax.nn.relu(d2[:, :, None] - d2[:, None, :] + margin)
        count = jnp.sum(valid)
        return jnp.sum(jnp.where(valid, t, 0.0)) / jnp.maximum(count, 1)
    if mining == "hard":
        hardest_pos = jnp.max(jnp.where(pos, d2, -jnp.inf), axis=1)
        hardest_neg = jnp.min(jnp.where(neg, d2, jnp.inf), axis=1)
        ok = jnp.any(pos, 1) & jnp.any(neg, 1)
        t = jax.nn.relu(jnp.where(ok, hardest_pos - hardest_neg, 0.0) + margin)
        return jnp.sum(jnp.where(ok, t, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    raise ValueError(f"triplet mining {mining!r}: use 'all' (batch-all) or 'hard' (batch-hard)")
