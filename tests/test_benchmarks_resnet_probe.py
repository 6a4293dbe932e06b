"""The ResNet probe: its Winograd convolution is exact (value and gradients) and both parts run at a
tiny size with well-formed results. No timing assertions (the machine is shared)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

from benchmarks.resnet_probe import conv_shapes, winograd_conv


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), h=st.sampled_from([2, 4, 6, 10]), w=st.sampled_from([2, 4, 8]),
       cin=st.integers(1, 5), cout=st.integers(1, 5))
def test_winograd_conv_equals_conv(b, h, w, cin, cout):
    """F(2 x 2, 3 x 3) is the zero-padded 3 x 3 convolution, in value and in both gradients."""
    kx, kk, kp = jax.random.split(jax.random.key(h * 1000 + w * 100 + cin * 10 + cout), 3)
    x = jax.random.normal(kx, (b, h, w, cin))
    kern = jax.random.normal(kk, (3, 3, cin, cout))
    p = jax.random.normal(kp, (b, h, w, cout))
    ref = lambda x, k: jnp.vdot(lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")), p)
    got = lambda x, k: jnp.vdot(winograd_conv(x, k), p)
    (v1, g1), (v2, g2) = [jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kern) for f in (ref, got)]
    np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-4)
    for a, r in zip(g2, g1):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-4)


def test_winograd_conv_rejects_odd_sizes_and_other_kernels():
    with pytest.raises(ValueError, match="even height and width"):
        winograd_conv(jnp.ones((1, 5, 4, 2)), jnp.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="3 x 3 kernel"):
        winograd_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((5, 5, 2, 2)))


def test_conv_shapes():
    assert conv_shapes(64) == [("layer1", 16, 64), ("layer2", 8, 128), ("layer3", 4, 256), ("layer4", 2, 512)]
    assert conv_shapes(32) == [("layer1", 8, 64), ("layer2", 4, 128), ("layer3", 2, 256)]


def test_probe_tiny():
    pytest.importorskip("torch")
    from benchmarks.resnet_probe import probe_blocks, probe_convs
    # batch 8: with 2 images layer4's BatchNorm (1 x 1 maps at 32 px) normalises 2 values per
    # channel, its input gradient is cancellation noise (a 1e-6 change of the images moved the stem
    # gradient by 14%), and two exact schedules of the network (XLA:GPU's) differed by 327%
    res = probe_blocks(size=32, batch=8, reps=1)
    assert [r["block"] for r in res["blocks"]] == ["stem"] + [f"layer{i}_{j}" for i in range(1, 5) for j in range(2)]
    assert res["blocks"][-1]["out_shape"] == [8, 1, 1, 512]
    for r in res["blocks"]:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("rsjax_forward_s", "rsjax_backward_s", "torch_forward_s"))
        assert math.isfinite(r["torch_backward_s"])      # a difference of two medians: may be <= 0 at this size
    assert set(res["whole_forward_backward_s"]) == {"rsjax_one_jit", "rsjax_chained_blocks", "torch"}
    assert res["chained_stem_grad_rel_diff"] < 1e-4      # the chained blocks compute the one jit's gradient
    rows = probe_convs(size=16, batch=2, reps=1)
    assert [(r["layer"], r["side"]) for r in rows] == [("layer1", 4), ("layer2", 2)]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("rsjax_s", "winograd_s", "xla_s", "torch_s"))
        assert max(r["max_rel_grad_diff_vs_xla"].values()) < 1e-4
