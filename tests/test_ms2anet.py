"""MS2A-Net: shapes for any H, W (odd too) and D, equality with a PyTorch implementation of the
reference math, the loss falls, and the training step compiles once."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from rsjax import configs
from rsjax.models.ms2anet import MS2ANet, _weigh_bands, ms2anet_loss, prepare_scene
from rsjax.train.hsi import apply_model, build_model, init_state, train_chunk, train_step


@settings(max_examples=8)
@given(h=st.integers(1, 12), w=st.integers(1, 12), d=st.integers(1, 10), ablation=st.sampled_from(["A1", "A2", "A3"]))
def test_forward_shapes(h, w, d, ablation):
    x = jax.random.uniform(jax.random.key(0), (1, h, w, d))
    model = MS2ANet(d, ablation=ablation)
    out, _ = model.init_with_output(jax.random.key(1), x)
    assert out["recon"].shape == (1, h, w, d)
    assert out["m_prime"].shape == (1, h, w, 36)
    assert out["code"].shape == ((1, h, w, 3) if ablation == "A1" else (1, h, w, 36))


def test_configurable_widths():
    x = jnp.ones((1, 7, 5, 4))
    model = MS2ANet(4, d1=5, d2=2, d3=4, dilations=(1, 3), kernel_size=3)
    out, _ = model.init_with_output(jax.random.key(0), x)
    assert out["m_prime"].shape == (1, 7, 5, 10)
    with pytest.raises(ValueError, match="ablation"):
        MS2ANet(4, ablation="A4").init(jax.random.key(0), x)


# ---------------------------------------------------------------- PyTorch reference of the paper's math

def torch_reference(x_nhwc, params, lam, d1_rates=(1, 2, 4), spf_odd="crop", ablation="A3"):
    """MS2A-Net forward and loss written in PyTorch after the authors' code, NCHW, weights from rsjax:
    (R, M', loss, the clustering code). The paper's ablations: A1 decodes SAF alone and clusters
    SAF, A2 decodes SPF alone, A3 both."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    conv_w = lambda p: t(p["kernel"]).permute(3, 2, 0, 1)

    def conv(x, p, dilation=1, stride=1, padding=None):
        k = p["kernel"].shape[0]
        pad = dilation * (k // 2) if padding is None else padding
        return F.conv2d(x, conv_w(p), t(p["bias"]), stride=stride, padding=pad, dilation=dilation)

    def bn(x, p):
        return F.batch_norm(x, None, None, t(p["scale"]), t(p["bias"]), training=True, eps=1e-5)

    x = t(x_nhwc).permute(0, 3, 1, 2)                          # 1, D, H, W
    _, d, h, w = x.shape
    sp = params["spatial"]
    m = torch.cat([F.relu(bn(conv(x, sp[f"conv_l{r}"], dilation=r), sp[f"bn_l{r}"])) for r in d1_rates], 1)
    parts = []
    if ablation in ("A1", "A3"):
        f = F.relu(bn(conv(x, params["spectral"]["conv"]), params["spectral"]["bn"])).reshape(3, h * w)
        f = torch.softmax(f, dim=0)
        x_flat = x.reshape(d, h * w)
        sa = torch.softmax(x_flat, dim=0) @ f.T                   # D x 3
        parts.append((sa.T @ x_flat).reshape(1, 3, h, w))         # SAF
    if ablation in ("A2", "A3"):
        y = conv(m, params["spf"]["conv"], stride=2, padding=0)
        if spf_odd == "resize":                                    # nn.Upsample(size=(H, W))
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        else:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)[:, :, :h, :w]
        parts.append(F.relu(bn(y, params["spf"]["bn"])))         # SPF
    recon = F.relu(bn(conv(torch.cat(parts, 1), params["dec_conv"]), params["dec_bn"]))
    loss = F.mse_loss(recon, x) + lam * F.mse_loss(m.mean(1), x.mean(1))
    code = parts[0] if ablation == "A1" else m
    nhwc = lambda a: a.permute(0, 2, 3, 1).numpy()
    return nhwc(recon), nhwc(m), float(loss), nhwc(code)


@pytest.mark.parametrize("h,w,d,spf_odd,ablation", [(8, 8, 6, "crop", "A3"), (9, 7, 5, "crop", "A3"),
                                                   (11, 12, 13, "crop", "A3"), (9, 7, 5, "resize", "A3"),
                                                   (11, 12, 4, "resize", "A3"), (9, 7, 5, "crop", "A1"),
                                                   (9, 7, 5, "crop", "A2")])
def test_forward_and_loss_equal_pytorch_reference(h, w, d, spf_odd, ablation):
    """R, M', the clustering code and the loss equal the reference, the loss both on the NHWC scene and on
    the prepared scene that training uses (its channels-first branch)."""
    x = jax.random.uniform(jax.random.key(h * w), (1, h, w, d))
    model = MS2ANet(d, spf_odd=spf_odd, ablation=ablation)
    variables = model.init(jax.random.key(2), x)
    out, _ = apply_model(model, variables["params"], variables["batch_stats"], x)
    recon, m, ref_loss, code = torch_reference(x, jax.device_get(variables["params"]), 0.1, spf_odd=spf_odd,
                                               ablation=ablation)
    np.testing.assert_allclose(out["recon"], recon, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["m_prime"], m, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["code"], code, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(ms2anet_loss(x, out, 0.1)), ref_loss, rtol=1e-4, atol=1e-6)
    scene = prepare_scene(x)
    out_p, _ = apply_model(model, variables["params"], variables["batch_stats"], scene)
    np.testing.assert_allclose(float(ms2anet_loss(scene, out_p, 0.1)), ref_loss, rtol=1e-4, atol=1e-6)


@settings(max_examples=10)
@given(n=st.integers(1, 2), d=st.integers(1, 9), d3=st.integers(1, 4), p=st.integers(1, 30), seed=st.integers(0, 99))
def test_weigh_bands_equals_autodiff(n, d, d3, p, seed):
    """SAF = SA^T X with the hand-written gradient: same value and gradients as autodiff's."""
    ks = jax.random.split(jax.random.key(seed), 3)
    sa, x, probe = (jax.random.normal(ks[0], (n, d, d3)), jax.random.normal(ks[1], (n, d, p)),
                    jax.random.normal(ks[2], (n, d3, p)))
    plain = lambda sa, x: jnp.swapaxes(sa, 1, 2) @ x
    np.testing.assert_allclose(_weigh_bands(sa, x), plain(sa, x), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(lambda *a: jnp.sum(f(*a) * probe), argnums=(0, 1))(sa, x) for f in (_weigh_bands, plain)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_weigh_bands_gradient_has_the_scene_on_the_left(xla_cpu):
    """The SA gradient is one (D x d3) product, not autodiff's (d3 x D) one transposed (slow on
    XLA:CPU when the left operand has only d3 rows)."""
    sa, x = jnp.ones((1, 40, 3)), jnp.ones((1, 40, 5000))
    grad = jax.jit(jax.grad(lambda sa: jnp.sum(jnp.tanh(_weigh_bands(sa, x)))))
    hlo = grad.lower(sa).compile().as_text()
    assert re.search(r"f32\[40,3\]\{1,0\} dot\(", hlo) and not re.search(r"f32\[1?,?3,40\]\{[0-9,]+\} dot\(", hlo)


# ---------------------------------------------------------------- training

def _tiny_setup(method="ms2anet"):
    cfg = configs.get("ms2anet")
    cfg.method = method
    x = jax.random.uniform(jax.random.key(0), (1, 9, 10, 6))
    model = build_model(cfg, 6)
    tx = optax.adam(1e-2)
    return cfg, x, model, tx, init_state(model, x, tx, 0)


@pytest.mark.parametrize("method", ["ms2anet", "ae", "cae"])
def test_loss_falls(method):
    cfg, x, model, tx, state = _tiny_setup(method)
    chunk = jax.jit(functools.partial(train_chunk, n=30, model=model, tx=tx, lam=0.1))
    state, losses = chunk(state, x)
    assert losses[-1] < 0.7 * losses[0]
    assert float(state.best_loss) == pytest.approx(float(losses.min()))
    assert int(state.step) == 30


@pytest.mark.parametrize("keep", ["updated", "evaluated"])
def test_best_params_are_those_of_the_lowest_loss(keep):
    """"evaluated" keeps the parameters that scored the lowest loss; "updated" (the authors'
    torch.save after optimizer.step()) the parameters right after that iteration's update."""
    cfg, x, model, tx, state = _tiny_setup()
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, lam=0.1, keep=keep))
    history = []
    for _ in range(6):
        before = jax.device_get(state.params)
        state, loss = step(state, x)
        history.append((float(loss), before if keep == "evaluated" else jax.device_get(state.params)))
    best_loss, best_params = min(history, key=lambda t: t[0])
    assert float(state.best_loss) == pytest.approx(best_loss)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.best_params), best_params)


def test_keep_rejects_unknown_choice():
    cfg, x, model, tx, state = _tiny_setup()
    with pytest.raises(ValueError, match="keep must be one of"):
        train_step(state, x, model=model, tx=tx, lam=0.1, keep="last")


def test_step_compiles_once():
    cfg, x, model, tx, state = _tiny_setup()
    traces = []

    def counted(state, x):
        traces.append(1)
        return train_step(state, x, model=model, tx=tx, lam=0.1)

    step = jax.jit(counted, donate_argnums=(0,))
    for _ in range(5):
        state, _ = step(state, x)
    assert len(traces) == 1


def test_spf_odd_rejects_unknown_choice():
    with pytest.raises(ValueError, match="odd must be one of"):
        MS2ANet(4, spf_odd="pad").init(jax.random.key(0), jnp.ones((1, 5, 5, 4)))


def test_compiled_init_equals_eager_init():
    """init_state compiles model.init; the parameters must be those of the eager call, so a seed
    keeps giving the same network (and the committed results stay reproducible)."""
    from rsjax.train.hsi import _init_variables
    x = jax.random.uniform(jax.random.key(1), (1, 7, 8, 5))
    model = MS2ANet(5)
    for seed in (0, 3):
        eager = model.init(jax.random.key(seed), x, train=True)
        compiled = _init_variables(model, jax.random.key(seed), x)
        assert jax.tree.structure(eager) == jax.tree.structure(compiled)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(eager), jax.device_get(compiled))


def test_fit_compiles_once_across_seeds():
    """The seeds of one run share the compiled chunk and feature extraction (and the model's init)."""
    from rsjax.train import hsi
    cfg = configs.get("ms2anet")
    cfg.iters, cfg.chunk = 4, 4
    cube = np.asarray(jax.random.uniform(jax.random.key(2), (6, 7, 5)))
    hsi.fit(cfg, cube, seed=0, progress=False)
    sizes = [f._cache_size() for f in (hsi._train_chunk, hsi._apply_model, hsi._init_variables)]
    codes = [hsi.fit(cfg, cube, seed=s, progress=False)["code"] for s in (1, 2)]
    assert [f._cache_size() for f in (hsi._train_chunk, hsi._apply_model, hsi._init_variables)] == sizes
    assert not np.array_equal(codes[0], codes[1])       # the seeds still differ
