"""Losses of SNCA-CE and its baselines, as pure functions of arrays.

- :func:`snca_loss`: scalable neighbourhood component analysis against the memory bank
  (Eqs. 5-7 of the paper, with the authors' optional margin), in log space.
- :func:`cross_entropy`: softmax cross-entropy with integer labels (Eq. 9).
- :func:`dcnn_loss`: D-CNN's metric term (Cheng et al. 2018) as the authors' code computes it
  (``HingeLoss``: tau1 0.44, tau2 0.05), the D-CNN baseline's default.
- :func:`contrastive_loss`: the pairwise contrastive loss (Eq. 1 of the paper) over all pairs of
  the batch.
- :func:`triplet_loss`: the triplet loss (Eq. 3), batch-all or batch-hard over the batch.

Embeddings are the L2-normalised FC1 outputs. Each loss is a mean over the batch (or over
its pairs / triplets), so its scale does not depend on the batch size, except :func:`dcnn_loss`,
which divides its sum over the ``B (B - 1) / 2`` pairs by ``B^2`` as the authors' code does
(about half the mean pair cost for large batches).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise ``log sum_{mask} exp(x)``; ``-inf`` (with a zero gradient) for empty rows.

    Empty rows are computed on a dummy finite row and then replaced, so no NaN reaches the
    gradient (the double-where trick).
    """
    any_ = jnp.any(mask, axis=-1)
    safe = jnp.where(mask, x, jnp.where(any_[:, None], -jnp.inf, 0.0))
    lse = jax.nn.logsumexp(safe, axis=-1)
    return jnp.where(any_, lse, -jnp.inf)


def _snca_log_p(lse_pos, lse_neg, sigma, margin):
    """``log p_i`` from the log-masses of the positive and negative rows (``-inf`` when empty),
    and whether it is defined (a positive row exists); 0 where it is not, with a zero gradient."""
    has_pos = jnp.isfinite(lse_pos)
    log_pos = jnp.where(has_pos, lse_pos, 0.0) - margin / sigma
    log_p = jnp.where(has_pos, log_pos - jnp.logaddexp(log_pos, lse_neg), 0.0)
    return log_p, has_pos


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
    log_pos = _masked_logsumexp(logits, same & not_self)
    log_neg = _masked_logsumexp(logits, (~same) & not_self)
    return _snca_log_p(log_pos, log_neg, sigma, margin)


SNCA_BLOCK = 4096   # bank rows per block of the blocked SNCA path (B x block logits stay in cache)


def snca_loss(f: jax.Array, labels: jax.Array, idx: jax.Array, bank: jax.Array,
              bank_labels: jax.Array, sigma: float, margin: float = 0.0,
              block_size: int | None = SNCA_BLOCK) -> jax.Array:
    """SNCA loss of a batch against the memory bank: ``-(1/B) sum_i log p_i`` (Eq. 7).

    Args:
      f: ``B x D`` normalised embeddings of the batch.
      labels: ``B`` integer labels of the batch.
      idx: ``B`` bank rows of the batch's images (their index in the training set).
      bank: ``N x D`` stored embeddings of the training set.
      bank_labels: ``N`` labels of the bank rows.
      sigma: the temperature.
      margin: subtracted (divided by sigma) from the positive log-mass; 0 by default.
      block_size: a bank larger than this is processed in blocks of this many rows
        (:func:`snca_loss_blocked`: memory and cache traffic linear in N, no ``B x N``
        temporaries); ``None`` always takes the dense path (:func:`snca_log_prob`).

    Samples without any other same-class bank row contribute 0 (the sum is still divided by B).
    """
    if block_size is not None and bank.shape[0] > block_size:
        return snca_loss_blocked(f, labels, idx, bank, bank_labels, sigma, margin, block_size)
    log_p, _ = snca_log_prob(f, labels, idx, bank, bank_labels, sigma, margin)
    return -jnp.sum(log_p) / f.shape[0]


def _block_starts(n: int, block: int) -> jax.Array:
    """First row of each block; the last block is moved back to end at row ``n`` (it then
    overlaps its predecessor, and rows before ``k * block`` are masked out of block ``k``)."""
    nb = -(-n // block)
    return jnp.minimum(jnp.arange(nb, dtype=jnp.int32) * block, n - block)


def _snca_blocks(f, labels, idx, bank, bank_labels, sigma, block):
    """Scan over the bank's blocks; ``body(carry, s, pos, neg, rows)`` sees each block's logits
    ``s`` (B x block) and masks of its positive / negative entries (own row and the rows of the
    overlap excluded). Returns a function ``run(body, init)``."""
    n = bank.shape[0]
    starts = _block_starts(n, block)
    firsts = jnp.arange(starts.shape[0], dtype=jnp.int32) * block

    def run(body, init):
        def step(carry, start_first):
            start, first = start_first
            rows = jax.lax.dynamic_slice_in_dim(bank, start, block)
            rl = jax.lax.dynamic_slice_in_dim(bank_labels, start, block)
            j = start + jnp.arange(block, dtype=jnp.int32)
            keep = (j[None, :] >= first) & (j[None, :] != idx[:, None])
            same = rl[None, :] == labels[:, None]
            s = (f @ rows.T) / sigma
            return body(carry, s, same & keep, (~same) & keep, rows), None
        return jax.lax.scan(step, init, (starts, firsts))[0]
    return run


def _lse_update(m, acc, s, mask):
    """One block of an online masked log-sum-exp: running max ``m`` and ``acc = sum exp(x - m)``."""
    x = jnp.where(mask, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(x, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    acc = acc * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(x - m_safe[:, None]), axis=-1)
    return m_new, acc


def _snca_blocked_lse(f, labels, idx, bank, bank_labels, sigma, block):
    b = f.shape[0]
    init = (jnp.full((b,), -jnp.inf, f.dtype), jnp.zeros((b,), f.dtype)) * 2

    def body(carry, s, pos, neg, rows):
        mp, ap, mn, an = carry
        return (*_lse_update(mp, ap, s, pos), *_lse_update(mn, an, s, neg))

    mp, ap, mn, an = _snca_blocks(f, labels, idx, bank, bank_labels, sigma, block)(body, init)
    lse = lambda m, a: jnp.where(a > 0, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(jnp.where(a > 0, a, 1.0)), -jnp.inf)
    return lse(mp, ap), lse(mn, an)


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def snca_loss_blocked(f, labels, idx, bank, bank_labels, sigma: float, margin: float = 0.0,
                      block_size: int = SNCA_BLOCK):
    """:func:`snca_loss` over the bank in blocks of ``block_size`` rows (a ``lax.scan`` with an
    online log-sum-exp of the positive and the negative mass), with a custom gradient that
    runs the blocks again: ``d log p_i / d s_ij = (1 - p_i) softmax_pos(s_i)_j`` for a
    positive row, ``-(1 - p_i) softmax_neg(s_i)_j`` for a negative one. Time is linear in N and
    memory is ``B x block_size``, not ``B x N``. ``f``, ``sigma`` and ``margin`` are
    differentiated (so the last two may be traced, as in a jitted or vmapped sweep); the bank is
    a buffer."""
    return _snca_blocked_fwd(f, labels, idx, bank, bank_labels, sigma, margin, block_size)[0]


def _snca_blocked_fwd(f, labels, idx, bank, bank_labels, sigma, margin, block_size):
    block = min(int(block_size), bank.shape[0])
    bank = jax.lax.stop_gradient(bank)
    lse_pos, lse_neg = _snca_blocked_lse(f, labels, idx, bank, bank_labels, sigma, block)
    log_p, _ = _snca_log_p(lse_pos, lse_neg, sigma, margin)
    return -jnp.sum(log_p) / f.shape[0], (f, labels, idx, bank, bank_labels, sigma, margin, lse_pos, lse_neg)


def _snca_blocked_bwd(block_size, res, ct):
    f, labels, idx, bank, bank_labels, sigma, margin, lse_pos, lse_neg = res
    block = min(int(block_size), bank.shape[0])
    log_p, has_pos = _snca_log_p(lse_pos, lse_neg, sigma, margin)
    one_minus_p = jnp.where(has_pos, -jnp.expm1(log_p), 0.0)
    lp = jnp.where(has_pos, lse_pos, 0.0)[:, None]
    ln = jnp.where(jnp.isfinite(lse_neg), lse_neg, 0.0)[:, None]

    def body(carry, s, pos, neg, rows):
        g, ws = carry
        w = jnp.where(pos, jnp.exp(jnp.where(pos, s, 0.0) - lp), 0.0) \
            - jnp.where(neg, jnp.exp(jnp.where(neg, s, 0.0) - ln), 0.0)
        return g + (w * one_minus_p[:, None]) @ rows, ws + jnp.sum(w * jnp.where(pos | neg, s, 0.0), axis=-1)

    zeros = (jnp.zeros_like(f), jnp.zeros_like(lp[:, 0]))
    g, ws = _snca_blocks(f, labels, idx, bank, bank_labels, sigma, block)(body, zeros)
    scale = -ct / f.shape[0]                       # d loss = scale * sum_i d log p_i
    df = scale * g / sigma
    # log p_i depends on sigma through s = f b / sigma (d s / d sigma = -s / sigma) and through the
    # margin's -margin / sigma (d log p_i / d (margin / sigma) = -(1 - p_i))
    d_sigma = scale * jnp.sum(one_minus_p * (-ws / sigma + margin / sigma**2))
    d_margin = scale * jnp.sum(-one_minus_p / sigma)
    return (df, None, None, None, None, jnp.asarray(d_sigma, jnp.result_type(sigma)).reshape(jnp.shape(sigma)),
            jnp.asarray(d_margin, jnp.result_type(margin)).reshape(jnp.shape(margin)))


snca_loss_blocked.defvjp(_snca_blocked_fwd, _snca_blocked_bwd)


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


def _sum_over_pairs(per_pair: jax.Array) -> jax.Array:
    """The sum of a (B, B) matrix of pair costs over the pairs ``i < j``."""
    b = per_pair.shape[0]
    return jnp.sum(jnp.where(jnp.triu(jnp.ones((b, b), bool), k=1), per_pair, 0.0))


def dcnn_loss(f: jax.Array, labels: jax.Array, tau1: float = 0.44, tau2: float = 0.05) -> jax.Array:
    """D-CNN's metric-learning term (Cheng et al. 2018), as the SNCA-CE authors' code computes it.

    Each pair ``i < j`` costs ``max(0, tau2 - y_ij (tau1 - d_ij^2))``, with ``y_ij = 1`` for a
    same-class pair and ``-1`` otherwise and ``d_ij^2 = ||f_i - f_j||^2``: same-class pairs are
    pulled within ``d^2 <= tau1 - tau2``, other pairs pushed beyond ``d^2 >= tau1 + tau2``. The sum
    is divided by ``B^2`` (the code's mean over the B x B matrix whose lower triangle is zero)."""
    b = f.shape[0]
    d2 = pairwise_sq_distances(f, f)
    y = jnp.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    per_pair = jax.nn.relu(tau2 - y * (tau1 - d2))
    return _sum_over_pairs(per_pair) / (b * b)


def contrastive_loss(f: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    """Contrastive loss over all pairs ``i < j`` of the batch (Eq. 1 of the paper).

    A same-class pair costs ``d_ij^2``, a different-class pair ``max(0, margin - d_ij)^2``,
    with ``d_ij = ||f_i - f_j||`` the Euclidean distance of the embeddings (at most 2 for
    normalised ones); the result is the mean over the ``B (B - 1) / 2`` pairs (0 for a batch of
    one, which has none).
    """
    b = f.shape[0]
    d2 = pairwise_sq_distances(f, f)
    same = labels[:, None] == labels[None, :]
    per_pair = jnp.where(same, d2, jnp.square(jax.nn.relu(margin - _safe_sqrt(d2))))
    return _sum_over_pairs(per_pair) / max(b * (b - 1) / 2, 1)


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
