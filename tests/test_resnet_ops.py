"""The ResNet's GEMM convolutions and max-pool equal XLA's in value and gradient."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

from rsjax.models.resnet import _DW_ROWS, Conv, ResNet, _kernel_major, _row_batches, conv_im2col, max_pool


@settings(max_examples=14)
@given(h=st.integers(1, 11), w=st.integers(1, 11), k=st.sampled_from([1, 3, 7]), stride=st.sampled_from([1, 2, 3]),
       pad=st.integers(0, 3), cin=st.sampled_from([3, 8]), seed=st.integers(0, 999))
def test_conv_im2col_equals_lax(h, w, k, stride, pad, cin, seed):
    """Both patch gatherings: strided slices (8 channels) and stride blocks (the stem's 3)."""
    if h + 2 * pad < k or w + 2 * pad < k:
        return
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (2, h, w, cin))
    kernel = jax.random.normal(kw, (k, k, cin, 4))
    padding = ((pad, pad), (pad, pad))
    ref = lambda x, kern: lax.conv_general_dilated(x, kern, (stride, stride), padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fast = lambda x, kern: conv_im2col(x, kern, (stride, stride), padding)
    np.testing.assert_allclose(fast(x, kernel), ref(x, kernel), rtol=1e-4, atol=1e-4)
    probe = jax.random.normal(kg, ref(x, kernel).shape)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * probe), argnums=(0, 1))(x, kernel)
    g_fast = jax.grad(lambda *a: jnp.sum(fast(*a) * probe), argnums=(0, 1))(x, kernel)
    for a, b in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@given(rows=st.integers(1, 2**22))
def test_row_batches_split_long_contractions_evenly(rows):
    """The most halvings that divide the rows and leave every batch at least _DW_ROWS long."""
    n = _row_batches(rows)
    assert rows % n == 0 and n & (n - 1) == 0
    assert n == 1 or rows // n >= _DW_ROWS
    assert rows % (2 * n) or rows // (2 * n) < _DW_ROWS


def test_kernel_gradient_over_split_rows_equals_lax():
    """A contraction long enough to be split (2 x 128 x 128 = 32768 rows: two batches)."""
    x = jax.random.normal(jax.random.key(0), (2, 128, 128, 2))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    probe = jax.random.normal(jax.random.key(2), (2, 128, 128, 4))
    assert _row_batches(2 * 128 * 128) == 2
    ref = lambda k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fast = lambda k: conv_im2col(x, k, (1, 1), ((1, 1), (1, 1)))
    g_ref = jax.grad(lambda k: jnp.sum(ref(k) * probe))(kernel)
    g_fast = jax.grad(lambda k: jnp.sum(fast(k) * probe))(kernel)
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-4, atol=1e-2)


def test_kernel_gradient_reads_the_output_gradient_as_it_lies(xla_cpu):
    """The kernel gradient is one product contracting the rows of g and of the patches (Eigen's
    path on CPU), with no transposed copy of g (XLA:CPU's strided copies are slow; the 4-D
    contraction over (B, Ho, Wo) was canonicalised into exactly that copy)."""
    x, kernel = jnp.ones((4, 8, 8, 16)), jnp.ones((3, 3, 16, 8))
    grad = jax.jit(jax.grad(lambda k: jnp.sum(jnp.tanh(conv_im2col(x, k, (1, 1), ((1, 1), (1, 1)))))))
    hlo = grad.lower(kernel).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    assert re.search(r"= f32\[8,144\]\{1,0\} dot\(.*lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{0\}", entry)
    assert not re.search(r"= f32\[8,256\]", entry)
    np.testing.assert_allclose(
        grad(kernel), jax.grad(lambda k: jnp.sum(jnp.tanh(lax.conv_general_dilated(
            x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))))(kernel), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows_per_image, kernel_major", [(64, False), (1, True)])
def test_kernel_gradient_in_either_orientation_equals_lax(rows_per_image, kernel_major, xla_cpu):
    """Few rows and a large kernel (layer4 at 64 px) give the (K, Cout) product, the kernel's own
    layout; many rows the (Cout, K) one, transposed afterwards. Both equal XLA's gradient."""
    side = int(rows_per_image ** 0.5)
    x = jax.random.normal(jax.random.key(0), (4, side, side, 32))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 32, 64))
    assert _kernel_major(4 * rows_per_image, 3 * 3 * 32, 64) == kernel_major
    conv = lambda k: conv_im2col(x, k, (1, 1), ((1, 1), (1, 1)))
    ref = lambda k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    grad = jax.jit(jax.grad(lambda k: jnp.sum(jnp.tanh(conv(k)))))
    entry = grad.lower(kernel).compile().as_text()
    entry = entry[entry.index("ENTRY"):]
    product = r"f32\[288,64\]\{1,0\} dot\(" if kernel_major else r"f32\[64,288\]\{1,0\} dot\("
    assert re.search(product, entry), entry
    np.testing.assert_allclose(grad(kernel), jax.grad(lambda k: jnp.sum(jnp.tanh(ref(k))))(kernel),
                               rtol=1e-4, atol=1e-4)


@settings(max_examples=12)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 999), relu=st.booleans(),
       window=st.sampled_from([(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), (3, 3, 0)]))
def test_max_pool_equals_xla_including_ties(h, w, seed, relu, window):
    """Same values, and the gradient goes to the first maximum (ReLU zeros make many ties), for the
    ResNet's 3/2/1 pooling and other window/stride/padding combinations."""
    k, s, p = window
    if h + 2 * p < k or w + 2 * p < k:
        return
    x = jax.random.normal(jax.random.key(seed), (2, h, w, 3))
    if relu:
        x = jnp.maximum(x, 0)
    ref = lambda x: nn.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))
    out = ref(x)
    np.testing.assert_array_equal(max_pool(x, k, s, p), out)
    weights = jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * weights))(x)
    g_fast = jax.grad(lambda x: jnp.sum(max_pool(x, k, s, p) * weights))(x)
    np.testing.assert_array_equal(g_fast, g_ref)


def test_max_pool_gradient_materialises_argmax_and_incoming_gradient(xla_cpu):
    """Two fusion barriers (while loops) in the compiled gradient, so that XLA:CPU does not
    recompute the argmax and the incoming gradient for every plane of the interleave."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(max_pool(jnp.maximum(x, 0), 3, 2, 1)))))
    assert grad.lower(x).compile().as_text().count(" while(") == 2


def test_resnet_with_fast_ops_equals_flax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    small = dict(stage_sizes=(1, 1, 1, 1), num_filters=8, dim=8, num_classes=3)   # every op of ResNet18
    fast, ref = ResNet(**small), ResNet(**small, conv=nn.Conv)
    variables = ref.init(jax.random.key(1), x, train=False)

    def loss(model, params):
        # Evaluation mode: train-mode BatchNorm over 2 values (layer4 is 1 x 1 here) would amplify
        # float rounding; the ops themselves are compared in train-relevant gradients above.
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
        return jnp.sum(out["logits"] ** 2) + jnp.sum(out["embedding"])

    l_fast, g_fast = jax.value_and_grad(lambda p: loss(fast, p))(variables["params"])
    l_ref, g_ref = jax.value_and_grad(lambda p: loss(ref, p))(variables["params"])
    np.testing.assert_allclose(l_fast, l_ref, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), g_fast, g_ref)
    assert Conv(4, (3, 3)).init(jax.random.key(0), x)["params"]["kernel"].shape == (3, 3, 3, 4)
