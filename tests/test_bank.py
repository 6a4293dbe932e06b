"""Memory bank: initialisation, MB momentum write, MU overwrite, the momentum schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rsjax import bank as B

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=15)
_write = jax.jit(B.momentum_write)


def test_init_uniform_range_and_optional_normalisation():
    n, d = 2000, 12
    s = 1 / np.sqrt(d / 3)
    x = np.asarray(B.init_bank(jax.random.key(0), n, d))
    assert x.shape == (n, d) and x.dtype == np.float32
    assert x.min() >= -s and x.max() <= s
    assert x.min() < -0.95 * s and x.max() > 0.95 * s
    np.testing.assert_allclose(np.mean(np.sum(x * x, 1)), 1.0, atol=0.05)   # variance s^2/3 = 1/D
    y = np.asarray(B.init_bank(jax.random.key(0), n, d, normalise=True))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.sampled_from([0.0, 0.5, 0.8, 0.9]))
def test_momentum_write_matches_loop_and_leaves_other_rows(seed, m):
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(10, 4)).astype(np.float32)
    idx = rng.choice(10, 3, replace=False)
    f = rng.normal(size=(3, 4)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    got = np.asarray(_write(jnp.asarray(bank), jnp.asarray(idx), jnp.asarray(f), m))
    want = bank.copy()
    for k, i in enumerate(idx):
        row = m * bank[i] + (1 - m) * f[k]
        want[i] = row / np.linalg.norm(row)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got[idx], axis=1), 1.0, rtol=1e-5)


def test_overwrite_sets_rows():
    bank = jnp.zeros((5, 2))
    out = B.overwrite(bank, jnp.array([3, 1]), jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(out, [[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]])


def test_bank_momentum_schedule():
    code = jax.jit(lambda e: B.bank_momentum(e, 0.5, (80, 120), (0.8, 0.9)))   # the authors' code
    for epoch, m in [(0, 0.5), (79, 0.5), (80, 0.8), (119, 0.8), (120, 0.9), (200, 0.9)]:
        np.testing.assert_allclose(float(code(jnp.int32(epoch))), m, rtol=1e-6)
        np.testing.assert_allclose(float(B.bank_momentum(jnp.int32(epoch))), 0.5, rtol=1e-6)   # the paper
    np.testing.assert_allclose(float(B.bank_momentum(5, 0.3, (2,), (0.7,))), 0.7, rtol=1e-6)
    for boundaries in ((120, 80), (80, 80)):       # out of order, the later step would be skipped: refused
        with pytest.raises(ValueError, match=r"must be distinct epochs in ascending order"):
            B.bank_momentum(130, 0.5, boundaries, (0.9, 0.8))
