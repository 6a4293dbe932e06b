"""conv_taps (GEMM over taps + shifted adds, or im2col) equals lax.conv_general_dilated; the GEMM
transpose equals a transpose exactly."""
import jax
import pytest
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from jax import lax

from cpu_forms import xla_cpu_forms  # tests/cpu_forms.py
from rsjax.models.layers import Conv, conv_taps, materialize, polyphase_conv_cnhw, transpose_by_gemm


def lax_conv(x, kernel, dilation):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@settings(max_examples=10)
@given(h=st.integers(1, 13), w=st.integers(1, 13), cin=st.integers(1, 9), cout=st.integers(1, 9),
       k=st.sampled_from([1, 3, 5]), dilation=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_conv_taps_equals_lax_conv_in_value_and_gradient(h, w, cin, cout, k, dilation, seed):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (2, h, w, cin))
    kernel = jax.random.normal(kw, (k, k, cin, cout))
    probe = jax.random.normal(kg, (2, h, w, cout))   # a random cotangent
    f_taps = lambda x, kern: jnp.sum(conv_taps(x, kern, dilation) * probe)
    f_lax = lambda x, kern: jnp.sum(lax_conv(x, kern, dilation) * probe)
    np.testing.assert_allclose(conv_taps(x, kernel, dilation), lax_conv(x, kernel, dilation), rtol=1e-4, atol=1e-4)
    g_taps = jax.grad(f_taps, argnums=(0, 1))(x, kernel)
    g_lax = jax.grad(f_lax, argnums=(0, 1))(x, kernel)
    for a, b in zip(g_taps, g_lax):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 11), w=st.integers(1, 11), d=st.integers(1, 4), k=st.sampled_from([1, 3, 5]),
       seed=st.integers(0, 2**16))
def test_polyphase_conv_equals_dilated_conv(h, w, d, k, seed):
    """The polyphase rewrite (``RSJAX_CONV=polyphase``) is the dilated 'SAME' convolution, in value
    and both gradients, for any H, W (multiples of d or not, smaller than the kernel's reach too)."""
    kx, kk, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (3, 2, h, w))                     # CNHW
    kern = jax.random.normal(kk, (k, k, 3, 4))
    p = jax.random.normal(kp, (4, 2, h, w))
    ref = lambda x, kern: jnp.vdot(lax.conv_general_dilated(x, kern, (1, 1), "SAME", rhs_dilation=(d, d),
                                                            dimension_numbers=("CNHW", "HWIO", "CNHW")), p)
    got = lambda x, kern: jnp.vdot(polyphase_conv_cnhw(x, kern, d), p)
    (v1, g1), (v2, g2) = [jax.value_and_grad(f, argnums=(0, 1))(x, kern) for f in (ref, got)]
    np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-4)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_conv_module_implementations_agree():
    x = jax.random.normal(jax.random.key(0), (1, 9, 7, 5))
    fast, ref = Conv(4, 5, dilation=2), Conv(4, 5, dilation=2, impl="lax")
    params = fast.init(jax.random.key(1), x)
    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-5)


def test_conv_taps_rejects_even_kernel():

    with pytest.raises(ValueError, match="odd"):
        conv_taps(jnp.ones((1, 4, 4, 2)), jnp.ones((2, 2, 2, 3)))


@settings(max_examples=10)
@given(h=st.integers(1, 12), w=st.integers(1, 9), cin=st.integers(1, 6), couts=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       ks=st.lists(st.sampled_from([1, 3, 5]), min_size=3, max_size=3), dils=st.lists(st.sampled_from([1, 2, 4]), min_size=3, max_size=3),
       band_rows=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 2**16))
def test_conv_same_multi_equals_lax_convs_for_any_band_height(h, w, cin, couts, ks, dils, band_rows, seed):
    """Several convolutions of one CNHW input from one banded GEMM (bands smaller than the halo
    and not dividing H included) equal separate lax convolutions, in value and in gradient."""
    from rsjax.models.layers import conv_same_multi
    n = len(couts)
    keys = jax.random.split(jax.random.key(seed), 2 + 2 * n)
    x = jax.random.normal(keys[0], (cin, 2, h, w))
    kernels = tuple(jax.random.normal(keys[1 + i], (ks[i], ks[i], cin, c)) for i, c in enumerate(couts))
    probes = [jax.random.normal(keys[1 + n + i], (c, 2, h, w)) for i, c in enumerate(couts)]
    dilations = tuple(dils[:n])
    nhwc = lambda a: a.transpose(1, 2, 3, 0)

    def f_multi(x, kernels):
        return sum(jnp.sum(y * p) for y, p in zip(conv_same_multi(x, kernels, dilations, band_rows), probes))

    def f_lax(x, kernels):
        return sum(jnp.sum(nhwc(p) * lax_conv(nhwc(x), kern, d)) for kern, d, p in zip(kernels, dilations, probes))

    for y, kern, d in zip(conv_same_multi(x, kernels, dilations, band_rows), kernels, dilations):
        np.testing.assert_allclose(nhwc(y), lax_conv(nhwc(x), kern, d), rtol=1e-4, atol=1e-4)
    (gx, gk), (rx, rk) = jax.grad(f_multi, argnums=(0, 1))(x, kernels), jax.grad(f_lax, argnums=(0, 1))(x, kernels)
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-3)
    for a, b in zip(gk, rk):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kwargs", [dict(features=4, kernel_size=5, dilation=2), dict(features=3, kernel_size=3),
                                    dict(features=3, kernel_size=1, stride=2, padding="VALID")])
def test_conv_module_cnhw_layout_equals_nhwc_lax(kwargs):
    x = jax.random.normal(jax.random.key(0), (1, 9, 7, 5))
    ref = Conv(**kwargs, impl="lax")
    params = ref.init(jax.random.key(1), x)
    y = Conv(**kwargs, layout="CNHW").apply(params, x.transpose(3, 0, 1, 2))
    np.testing.assert_allclose(y.transpose(1, 2, 3, 0), ref.apply(params, x), rtol=1e-4, atol=1e-5)


@settings(max_examples=10)
@given(m=st.integers(1, 300), c=st.integers(1, 70), scale=st.sampled_from([1e-30, 1.0, 1e30]), seed=st.integers(0, 2**16))
def test_transpose_by_gemm_is_exact(m, c, scale, seed):
    """Bit for bit, over magnitudes from 1e-30 to 1e30 (one product by 1 per value, the rest zeros)."""
    a = jax.random.normal(jax.random.key(seed), (m, c)) * scale
    np.testing.assert_array_equal(np.asarray(jax.jit(transpose_by_gemm)(a)), np.asarray(a).T)


@settings(max_examples=12)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 4, 4, 3)]), dtype=st.sampled_from(["float32", "bfloat16", "int8"]),
       special=st.sampled_from([None, "first", "inf", "neg_zero"]), seed=st.integers(0, 2**16))
def test_materialize_is_exact_and_a_fusion_barrier(shape, dtype, special, seed):
    """Bit for bit the input (a NaN or integer-minimum first element skips the loop; infinities,
    NaN and -0.0 survive the product by one), inside a while loop of the compiled function (for
    integers too, where XLA folds ``x == x``), with an identity derivative."""
    x = np.asarray(jax.random.normal(jax.random.key(seed), shape) * 50).astype(dtype)
    flat = x.reshape(-1)
    if special == "first":
        flat[0] = np.iinfo(np.int8).min if dtype == "int8" else np.nan
    elif special == "inf" and dtype != "int8":
        flat[-1] = -np.inf
    elif special == "neg_zero" and dtype != "int8":
        flat[-1] = -0.0
    with xla_cpu_forms():                     # a barrier for XLA:CPU, the identity elsewhere
        f = jax.jit(lambda a: materialize(a))
        bits = f"u{x.dtype.itemsize}"
        np.testing.assert_array_equal(np.asarray(f(x)).view(bits), x.view(bits))
        assert "while" in f.lower(x).compile().as_text()
        if dtype == "float32" and special is None:
            w = jnp.arange(x.size, dtype=jnp.float32).reshape(shape)
            g = jax.grad(lambda a: jnp.sum(materialize(jnp.sin(a)) * w))(x)
            np.testing.assert_allclose(g, np.cos(x) * np.asarray(w), rtol=1e-5, atol=1e-4)
