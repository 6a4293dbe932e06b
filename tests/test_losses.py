"""Every vectorised loss against a naive Python loop, plus properties checked with hypothesis."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rsjax import losses
from rsjax.bank import l2_normalize

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=15)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64)


def naive_snca(f, labels, idx, bank, bank_labels, sigma, margin=0.0):
    """The authors' NCACrossEntropy written as loops: exp, self excluded, positive mass / e^m."""
    total = 0.0
    for i in range(len(f)):
        pos = neg = 0.0
        for j in range(len(bank)):
            if j == idx[i]:
                continue
            e = math.exp(float(np.dot(f[i], bank[j])) / sigma)
            if bank_labels[j] == labels[i]:
                pos += e
            else:
                neg += e
        pos /= math.exp(margin / sigma)
        p = pos / (pos + neg)
        if p > 0:
            total += math.log(p)
    return -total / len(f)


def naive_contrastive(f, labels, margin):
    total, pairs = 0.0, 0
    for i in range(len(f)):
        for j in range(i + 1, len(f)):
            d = float(np.linalg.norm(f[i] - f[j]))
            total += d * d if labels[i] == labels[j] else max(0.0, margin - d) ** 2
            pairs += 1
    return total / pairs


def naive_dcnn(f, labels, tau1, tau2):
    total = 0.0
    for i in range(len(f)):
        for j in range(i + 1, len(f)):
            y = 1.0 if labels[i] == labels[j] else -1.0
            total += max(0.0, tau2 - y * (tau1 - float(np.sum((f[i] - f[j]) ** 2))))
    return total / len(f) ** 2


def naive_triplet(f, labels, margin, mining):
    d = lambda a, b: float(np.sum((f[a] - f[b]) ** 2))
    n = len(f)
    if mining == "all":
        vals = [max(0.0, d(a, p) - d(a, q) + margin)
                for a in range(n) for p in range(n) for q in range(n)
                if p != a and labels[p] == labels[a] and labels[q] != labels[a]]
    else:
        vals = []
        for a in range(n):
            ps = [d(a, p) for p in range(n) if p != a and labels[p] == labels[a]]
            qs = [d(a, q) for q in range(n) if labels[q] != labels[a]]
            if ps and qs:
                vals.append(max(0.0, max(ps) - min(qs) + margin))
    return sum(vals) / len(vals) if vals else 0.0


_snca_jit = jax.jit(losses.snca_loss, static_argnums=(5, 6))
_contrastive_jit = jax.jit(losses.contrastive_loss, static_argnums=(2,))
_dcnn_jit = jax.jit(losses.dcnn_loss, static_argnums=(2, 3))
_triplet_jit = jax.jit(losses.triplet_loss, static_argnums=(2, 3))
_triplet_grad = jax.jit(jax.grad(losses.triplet_loss), static_argnums=(2, 3))


def _snca_case(seed, b, n, d, classes):
    rng = np.random.default_rng(seed)
    bank = _unit(rng, n, d)
    bank_labels = rng.integers(0, classes, n)
    idx = rng.choice(n, b, replace=False)
    labels = bank_labels[idx]
    f = _unit(rng, b, d)
    return f, labels, idx, bank, bank_labels


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([1, 5]), n=st.sampled_from([6, 16]), d=st.sampled_from([3, 8]),
       classes=st.integers(1, 4), sigma=st.sampled_from([0.05, 0.1, 0.5]), margin=st.sampled_from([0.0, 0.1]))
def test_snca_matches_naive_loop(seed, b, n, d, classes, sigma, margin):
    f, labels, idx, bank, bank_labels = _snca_case(seed, b, n, d, classes)
    got = _snca_jit(jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(idx),
                    jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels), sigma, margin)
    want = naive_snca(f, labels, idx, bank, bank_labels, sigma, margin)
    np.testing.assert_allclose(float(got), want, rtol=2e-4, atol=2e-4)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(1, 4))
def test_snca_gradient_finite_and_matches_eq8(seed, classes):
    """Gradient w.r.t. f_i (Eq. 8): (1/sigma)(sum_k p_ik f_k - sum_{k in Omega_i} p~_ik f_k) / B,
    finite even when a sample has no same-class row (it then contributes nothing)."""
    f, labels, idx, bank, bank_labels = _snca_case(seed, 4, 12, 5, classes)
    sigma = 0.2
    g = jax.grad(losses.snca_loss)(jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(idx),
                                   jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels), sigma)
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    for i in range(4):
        w = np.exp(bank @ f[i] / sigma)
        w[idx[i]] = 0
        same = bank_labels == labels[i]
        same[idx[i]] = False
        if not same.any():
            np.testing.assert_allclose(g[i], 0, atol=1e-7)
            continue
        p = w / w.sum()
        p_tilde = np.where(same, w, 0) / np.where(same, w, 0).sum()
        want = (p @ bank - p_tilde @ bank) / sigma / 4
        np.testing.assert_allclose(g[i], want, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_snca_invariant_to_bank_permutation_and_own_row(seed):
    """Reordering the bank (with its labels and the batch's idx) changes nothing, nor does the
    content of a sample's own row, which is excluded."""
    f, labels, idx, bank, bank_labels = _snca_case(seed, 3, 10, 4, 3)
    args = lambda fb, fl, fi: (jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(fi),
                               jnp.asarray(fb, jnp.float32), jnp.asarray(fl), 0.1)
    base = float(losses.snca_loss(*args(bank, bank_labels, idx)))
    perm = np.random.default_rng(seed).permutation(len(bank))
    inv = np.argsort(perm)
    permuted = float(losses.snca_loss(*args(bank[perm], bank_labels[perm], inv[idx])))
    np.testing.assert_allclose(permuted, base, rtol=1e-5)
    changed = bank.copy()   # sample 0's own row: changes log p_0 not at all (it does enter the others')
    changed[idx[0]] = _unit(np.random.default_rng(seed + 1), 1, bank.shape[1])[0]
    log_p = lambda fb: float(losses.snca_log_prob(*args(fb, bank_labels, idx))[0][0])
    np.testing.assert_allclose(log_p(changed), log_p(bank), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), margin=st.floats(0.01, 0.5))
def test_snca_margin_raises_loss(seed, margin):
    f, labels, idx, bank, bank_labels = _snca_case(seed, 4, 12, 4, 2)
    a = [jnp.asarray(x) for x in (f.astype(np.float32), labels, idx, bank.astype(np.float32), bank_labels)]
    assert float(losses.snca_loss(*a, 0.1, margin)) >= float(losses.snca_loss(*a, 0.1, 0.0))


def test_snca_edge_cases_lone_class_and_single_class():
    """A sample whose class has no other bank row contributes 0 (with zero gradient); a bank of
    one class gives p_i = 1 for every sample: loss 0, gradient 0, and never NaN."""
    rng = np.random.default_rng(3)
    bank = jnp.asarray(_unit(rng, 6, 3), jnp.float32)
    f = jnp.asarray(_unit(rng, 2, 3), jnp.float32)
    idx = jnp.array([0, 1])
    lone = jnp.array([7, 0, 0, 0, 1, 1])           # row 0 is the only one of class 7
    value, g = jax.value_and_grad(losses.snca_loss)(f, jnp.array([7, 0]), idx, bank, lone, 0.1)
    log_p, ok = losses.snca_log_prob(f, jnp.array([7, 0]), idx, bank, lone, 0.1)
    assert list(np.asarray(ok)) == [False, True]
    np.testing.assert_allclose(float(value), -float(log_p[1]) / 2, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g[0]) == 0)
    value, g = jax.value_and_grad(losses.snca_loss)(f, jnp.array([0, 0]), idx, bank, jnp.zeros(6, int), 0.1)
    assert float(value) == 0.0 and np.all(np.asarray(g) == 0)


def test_snca_extreme_logits_stay_finite():
    """sigma small enough that exp(s / sigma) overflows float32: log space keeps it finite."""
    f, labels, idx, bank, bank_labels = _snca_case(0, 4, 16, 4, 2)
    got = losses.snca_loss(jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(idx),
                           jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels), 0.001)
    assert np.isfinite(float(got)) and float(got) >= 0


def test_cross_entropy_matches_naive_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)) * 3
    labels = rng.integers(0, 4, 5)
    want = np.mean([-(logits[i, labels[i]] - math.log(np.exp(logits[i]).sum())) for i in range(5)])
    np.testing.assert_allclose(float(losses.cross_entropy(jnp.asarray(logits, jnp.float32),
                                                          jnp.asarray(labels))), want, rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([2, 7]), classes=st.integers(1, 4),
       margin=st.sampled_from([0.5, 1.0, 1.5]))
def test_contrastive_matches_naive_loop(seed, b, classes, margin):
    rng = np.random.default_rng(seed)
    f = _unit(rng, b, 5)
    labels = rng.integers(0, classes, b)
    got = _contrastive_jit(jnp.asarray(f, jnp.float32), jnp.asarray(labels), margin)
    np.testing.assert_allclose(float(got), naive_contrastive(f, labels, margin), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([2, 7]), classes=st.integers(1, 4),
       taus=st.sampled_from([(0.44, 0.05), (1.0, 0.2)]))
def test_dcnn_matches_naive_loop(seed, b, classes, taus):
    rng = np.random.default_rng(seed)
    f = _unit(rng, b, 5)
    labels = rng.integers(0, classes, b)
    got = _dcnn_jit(jnp.asarray(f, jnp.float32), jnp.asarray(labels), *taus)
    np.testing.assert_allclose(float(got), naive_dcnn(f, labels, *taus), rtol=1e-4, atol=1e-6)


def test_dcnn_is_zero_once_pairs_clear_their_margins():
    """Same-class pairs within d^2 <= tau1 - tau2 and other pairs beyond tau1 + tau2 cost nothing."""
    f = jnp.array([[1.0, 0.0], [np.cos(0.2), np.sin(0.2)], [-1.0, 0.0]])     # d^2: 0.04 (same), ~4 (other)
    assert float(losses.dcnn_loss(f, jnp.array([0, 0, 1]))) == 0.0
    assert float(losses.dcnn_loss(f, jnp.array([0, 1, 1]))) > 0.0


def test_contrastive_gradient_finite_for_identical_embeddings():
    f = jnp.ones((4, 3)) / jnp.sqrt(3.0)
    g = jax.grad(losses.contrastive_loss)(f, jnp.array([0, 1, 0, 1]), 1.0)
    assert np.all(np.isfinite(np.asarray(g)))


def test_a_batch_of_one_has_no_pairs_and_costs_nothing():
    f = jnp.ones((1, 3)) / jnp.sqrt(3.0)
    for loss in (losses.contrastive_loss, losses.dcnn_loss, losses.triplet_loss):
        assert float(loss(f, jnp.array([0]))) == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([2, 7]), classes=st.integers(1, 4),
       mining=st.sampled_from(["all", "hard"]))
def test_triplet_matches_naive_loop(seed, b, classes, mining):
    rng = np.random.default_rng(seed)
    f = _unit(rng, b, 4)
    labels = rng.integers(0, classes, b)
    got = _triplet_jit(jnp.asarray(f, jnp.float32), jnp.asarray(labels), 0.2, mining)
    np.testing.assert_allclose(float(got), naive_triplet(f, labels, 0.2, mining), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(_triplet_grad(
        jnp.asarray(f, jnp.float32), jnp.asarray(labels), 0.2, mining))))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), per_class=st.sampled_from([2, 3]))
def test_batch_hard_dominates_batch_all_on_balanced_batches(seed, per_class):
    """With equal class sizes every anchor has as many triplets, and the hardest one bounds
    each of them: batch-hard >= batch-all."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    f = jnp.asarray(_unit(rng, len(labels), 4), jnp.float32)
    hard = float(_triplet_jit(f, jnp.asarray(labels), 0.2, "hard"))
    assert hard >= float(_triplet_jit(f, jnp.asarray(labels), 0.2, "all")) - 1e-6


def test_triplet_rejects_unknown_mining():
    with pytest.raises(ValueError, match="batch-hard"):
        losses.triplet_loss(jnp.ones((2, 2)), jnp.array([0, 1]), 0.2, "semi")


def test_l2_normalize_matches_torch_semantics():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: l2_normalize(x).sum())(x))))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([1, 5]), n=st.integers(6, 40), d=st.sampled_from([3, 8]),
       classes=st.integers(1, 4), block=st.integers(2, 17), margin=st.sampled_from([0.0, 0.1]))
def test_blocked_snca_matches_naive_loop_and_dense_gradient(seed, b, n, d, classes, block, margin):
    """The blocked path (any block size, the last block overlapping its predecessor) gives the
    naive loop's loss and the dense path's gradient."""
    f, labels, idx, bank, bank_labels = _snca_case(seed, b, n, d, classes)
    args = (jnp.asarray(labels), jnp.asarray(idx), jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels), 0.1, margin)
    f = jnp.asarray(f, jnp.float32)
    got, g_blocked = jax.value_and_grad(lambda f: losses.snca_loss_blocked(f, *args, block))(f)
    np.testing.assert_allclose(float(got), naive_snca(np.asarray(f), labels, idx, bank, bank_labels, 0.1, margin),
                               rtol=2e-4, atol=2e-4)
    g_dense = jax.grad(lambda f: losses.snca_loss(f, *args, None))(f)
    np.testing.assert_allclose(g_blocked, g_dense, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(6, 40), classes=st.integers(1, 4), block=st.integers(2, 17),
       sigma=st.sampled_from([0.05, 0.1, 0.3]), margin=st.sampled_from([0.0, 0.1]))
def test_blocked_snca_gradient_in_sigma_and_margin_equals_the_dense_one(seed, n, classes, block, sigma, margin):
    """sigma and margin may be traced (a jitted sweep): the blocked path's gradient in them equals autodiff
    of the dense path."""
    f, labels, idx, bank, bank_labels = _snca_case(seed, 5, n, 8, classes)
    a = (jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(idx), jnp.asarray(bank, jnp.float32),
         jnp.asarray(bank_labels))
    blocked = jax.jit(jax.grad(lambda s, m: losses.snca_loss(*a, s, m, block_size=block), argnums=(0, 1)))
    dense = jax.grad(lambda s, m: losses.snca_loss(*a, s, m, block_size=None), argnums=(0, 1))
    for got, want in zip(blocked(jnp.float32(sigma), jnp.float32(margin)), dense(jnp.float32(sigma), jnp.float32(margin))):
        np.testing.assert_allclose(float(got), float(want), rtol=1e-3, atol=1e-4)


def test_snca_loss_takes_the_blocked_path_above_block_size():
    f, labels, idx, bank, bank_labels = _snca_case(0, 4, 50, 6, 3)
    a = (jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(idx), jnp.asarray(bank, jnp.float32),
         jnp.asarray(bank_labels), 0.1, 0.0)
    jaxpr = str(jax.make_jaxpr(lambda *x: losses.snca_loss(*x, *a[5:], block_size=16))(*a[:5]))
    assert "scan" in jaxpr
    np.testing.assert_allclose(float(losses.snca_loss(*a, block_size=16)), float(losses.snca_loss(*a, block_size=None)),
                               rtol=1e-5)
