"""conv_taps (GEMM over taps + shifted adds, or im2col) equals lax.conv_general_dilated."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from jax import lax

from rsjax.models.layers import Conv, conv_taps


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


def test_conv_module_implementations_agree():
    x = jax.random.normal(jax.random.key(0), (1, 9, 7, 5))
    fast, ref = Conv(4, 5, dilation=2), Conv(4, 5, dilation=2, impl="lax")
    params = fast.init(jax.random.key(1), x)
    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-5)


def test_conv_taps_rejects_even_kernel():
    import pytest
    with pytest.raises(ValueError, match="odd"):
        conv_taps(jnp.ones((1, 4, 4, 2)), jnp.ones((2, 2, 2, 3)))
