"""The per-backend choice of convolution forms (``RSJAX_CONV``) and mixed precision (``dtype``).

On CPU rsjax computes convolutions in its GEMM forms; on a GPU it uses XLA's own (cuDNN). Both
forms are exercised here on CPU by setting ``RSJAX_CONV``: they must compute the same loss and
gradients, and the setting must really switch the traced computation.
"""
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsjax.models.layers import compute_dtype, conv_form, gemm_forms, materialize, transpose_by_gemm
from rsjax.models.ms2anet import MS2ANet, ms2anet_loss
from rsjax.models.resnet import ResNet

SMALL_RESNET = dict(stage_sizes=(1, 1, 1, 1), num_filters=8, dim=8, num_classes=3)


def _scene(h=9, w=7, d=6, seed=0):
    return jax.random.uniform(jax.random.key(seed), (1, h, w, d))


def _ms2anet_loss_and_grads(model, variables, x):
    def loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
        return ms2anet_loss(x, out, 0.1)
    return jax.jit(jax.value_and_grad(loss))(variables["params"])   # a new function: traced anew


def _walk(jaxpr):
    """Every equation of ``jaxpr``, nested jaxprs (custom_vjp, pjit, scan) included."""
    yield from jaxpr.eqns
    for sub in jax.extend.core.subjaxprs(jaxpr):
        yield from _walk(sub)


def _eqns(fn, *args) -> list:
    """Every equation of ``fn``'s jaxpr at ``args``, nested jaxprs included."""
    return list(_walk(jax.make_jaxpr(fn)(*args).jaxpr))


def _primitives(fn, *args) -> set:
    return {eqn.primitive.name for eqn in _eqns(fn, *args)}


def test_default_is_gemm_forms_on_cpu(monkeypatch):
    monkeypatch.delenv("RSJAX_CONV", raising=False)
    assert gemm_forms() == (jax.default_backend() == "cpu")
    monkeypatch.setenv("RSJAX_CONV", "xla")
    assert not gemm_forms()
    monkeypatch.setenv("RSJAX_CONV", "GEMM")
    assert gemm_forms()
    monkeypatch.setenv("RSJAX_CONV", "polyphase")
    assert not gemm_forms() and conv_form() == "polyphase"
    monkeypatch.delenv("RSJAX_CONV")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert conv_form() == "polyphase"          # what auto means off the CPU (measured on an H200)


def test_unknown_rsjax_conv_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RSJAX_CONV", "cudnn")
    with pytest.raises(ValueError, match=r"RSJAX_CONV='cudnn'.*auto, gemm, xla, polyphase"):
        gemm_forms()


@pytest.mark.parametrize("h,w", [(9, 7), (8, 12)])
def test_ms2anet_conv_forms_agree(monkeypatch, h, w):
    x = _scene(h, w)
    model = MS2ANet(6)
    variables = model.init(jax.random.key(1), x, train=True)
    results, dilated = {}, {}
    for form in ("gemm", "xla", "polyphase"):
        monkeypatch.setenv("RSJAX_CONV", form)
        results[form] = _ms2anet_loss_and_grads(model, variables, x)
        code = lambda p: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=False)["code"]
        convs = [e for e in _eqns(code, variables["params"]) if e.primitive.name == "conv_general_dilated"]
        assert bool(convs) == (form != "gemm"), form
        dilated[form] = sum(max(e.params["rhs_dilation"]) > 1 for e in convs)
    assert dilated["xla"] == 2 and dilated["polyphase"] == 0       # dilations (1, 2, 4): two are dilated
    l_gemm, g_gemm = results["gemm"]
    for form in ("xla", "polyphase"):
        np.testing.assert_allclose(results[form][0], l_gemm, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), results[form][1], g_gemm)


def test_resnet_default_conv_follows_the_setting(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = ResNet(**SMALL_RESNET)
    variables = model.init(jax.random.key(1), x, train=False)

    def loss(params):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
        return jnp.sum(out["logits"] ** 2) + jnp.sum(out["embedding"])

    results = {}
    for form in ("gemm", "xla"):
        monkeypatch.setenv("RSJAX_CONV", form)
        results[form] = jax.jit(jax.value_and_grad(lambda p: loss(p)))(variables["params"])
        # a new function object: jit's trace cache would return the first trace (the setting is
        # read when a function is traced)
        assert ("conv_general_dilated" in _primitives(lambda p: loss(p), variables["params"])) == (form == "xla")
    np.testing.assert_allclose(results["gemm"][0], results["xla"][0], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
                 results["gemm"][1], results["xla"][1])


def test_transpose_is_plain_under_xla_forms(monkeypatch):
    a = jax.random.normal(jax.random.key(0), (37, 5))
    monkeypatch.setenv("RSJAX_CONV", "xla")
    assert "dot_general" not in _primitives(transpose_by_gemm, a)
    np.testing.assert_array_equal(transpose_by_gemm(a), a.T)


def test_materialize_is_plain_under_xla_forms(monkeypatch):
    monkeypatch.setenv("RSJAX_CONV", "xla")
    x = jnp.arange(6.0)
    f = jax.jit(lambda a: materialize(a * 2))          # a new function: no cached trace of the CPU form
    assert "while" not in f.lower(x).compile().as_text()
    np.testing.assert_array_equal(f(x), x * 2)


def test_compute_dtype_names():
    assert compute_dtype("bfloat16") == jnp.bfloat16
    assert compute_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match="float16.*float32, bfloat16"):
        compute_dtype("float16")


def _dtypes_of(fn, *args, prim: str) -> set:
    """Input dtypes of every ``prim`` equation in the jaxpr of ``fn`` (nested jaxprs included)."""
    return {str(v.aval.dtype) for eqn in _eqns(fn, *args) if eqn.primitive.name == prim
            for v in eqn.invars}


def _cosine(g1, g2) -> float:
    """Cosine between two gradient pytrees, flattened."""
    a, b = (jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(g)]) for g in (g1, g2))
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


@pytest.mark.parametrize("form", ["gemm", "xla", "polyphase"])
def test_ms2anet_bfloat16_is_mixed_precision(monkeypatch, form):
    """bfloat16 convolutions, float32 parameters and outputs, a loss and a training step close to
    float32's."""
    monkeypatch.setenv("RSJAX_CONV", form)
    x = _scene(10, 9, 8, seed=3)
    m32, m16 = MS2ANet(8), MS2ANet(8, dtype=jnp.bfloat16)
    variables = m32.init(jax.random.key(2), x, train=True)
    assert jax.tree.leaves(m16.init(jax.random.key(2), x, train=True)["params"])[0].dtype == jnp.float32
    (l32, g32), (l16, g16) = (_ms2anet_loss_and_grads(m, variables, x) for m in (m32, m16))
    assert l16.dtype == jnp.float32 and np.isfinite(float(l16))
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g16))
    assert _cosine(g16, g32) > 0.98     # (per leaf, the conv biases before BatchNorm have ~0 gradient)
    prim = "dot_general" if form == "gemm" else "conv_general_dilated"
    fwd = lambda p: m16.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=False)["code"]
    assert "bfloat16" in _dtypes_of(fwd, variables["params"], prim=prim)
    assert fwd(variables["params"]).dtype == jnp.float32


def test_resnet_bfloat16_step_tracks_float32():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 0])
    m32, m16 = ResNet(**SMALL_RESNET), ResNet(**SMALL_RESNET, dtype=jnp.bfloat16)
    variables = m32.init(jax.random.key(1), x, train=False)

    def loss(model, params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
        assert out["embedding"].dtype == out["logits"].dtype == jnp.float32
        return optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()

    (l32, g32), (l16, g16) = (jax.jit(jax.value_and_grad(lambda p: loss(m, p)))(variables["params"]) for m in (m32, m16))
    np.testing.assert_allclose(l16, l32, rtol=5e-2)
    # bfloat16 keeps 8 bits of mantissa and train-mode BatchNorm over the 4 values of layer4's
    # 1 x 1 maps amplifies that (0.97 here); a broken cast or gradient path gives ~0
    assert _cosine(g16, g32) > 0.9


def test_configs_carry_the_dtype_to_the_models():
    from rsjax import configs
    from rsjax.train import embed, hsi
    for name, build in (("ms2anet", lambda c: hsi.build_model(c, 5)), ("snca-ce-mb", lambda c: embed.build_model(c, 3))):
        cfg = configs.get(name)
        assert cfg.dtype == "float32" and build(cfg).dtype == jnp.float32
        cfg.dtype = "bfloat16"
        assert build(cfg).dtype == jnp.bfloat16
        cfg.dtype = "half"
        with pytest.raises(ValueError, match="dtype 'half' is not supported: use one of float32, bfloat16"):
            build(cfg)
