"""The SNCA benchmark's scaling part at tiny bank sizes: finite positive times, every key, in place.

No timing assertions (the machine is shared); only that the measurement runs and is well formed.
"""
import math

import jax
import numpy as np

from benchmarks.snca_step import snca_bank_scaling


def test_snca_bank_scaling_tiny():
    res = snca_bank_scaling((100, 1000), reps=2, min_rep_s=0.01, max_calls=5)
    per_n = ("n", "time_s", "time_per_row_ns", "compile_s", "calls_per_rep", "bank_copies", "same_buffer",
             "loss", "plain_time_s", "plain_bank_copies")
    for key in per_n + ("slope", "slope_largest", "dim", "batch", "reps"):
        assert key in res, key
    assert res["n"] == [100, 1000]
    for key in per_n:
        assert len(res[key]) == 2, key
    for key in ("time_s", "time_per_row_ns", "compile_s", "plain_time_s"):
        assert all(math.isfinite(t) and t > 0 for t in res[key]), (key, res[key])
    np.testing.assert_allclose(np.array(res["time_per_row_ns"]), np.array(res["time_s"]) / [100, 1000] * 1e9)
    assert all(math.isfinite(v) and v > 0 for v in res["loss"])
    assert math.isfinite(res["slope"]) and math.isfinite(res["slope_largest"])
    # the ordered composition updates the donated bank in place; the unordered one copies it
    assert res["bank_copies"] == [0, 0]
    assert all(res["same_buffer"])
    if jax.default_backend() == "cpu":          # XLA:CPU copies the bank when the write is not ordered
        assert all(c >= 1 for c in res["plain_bank_copies"]), res["plain_bank_copies"]


def test_snca_bank_scaling_without_plain_and_one_n():
    res = snca_bank_scaling((200,), reps=1, min_rep_s=0.0, max_calls=1, plain=False)
    assert "plain_time_s" not in res
    assert res["time_s"][0] > 0 and math.isnan(res["slope"])
