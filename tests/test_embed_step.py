"""The jitted training steps of every method on tiny random data (16x16 images, batch 8, N = 32)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from rsjax import bank as bank_lib
from rsjax import configs, losses
from rsjax.train import embed

from tiny_embed import B, C, N, SIZE, tiny_cfg  # tests/tiny_embed.py


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), N // C).astype(np.int32)
    # class-dependent mean colour plus noise: learnable, but not trivially
    images = (rng.normal(size=(N, SIZE, SIZE, 3)) + labels[:, None, None, None] * 0.3).astype(np.float32)
    return images, labels


@pytest.fixture(scope="module")
def variables():
    """One random initialisation (with FC2) shared by all methods; FC2 dropped where unused."""
    model = embed.build_model(tiny_cfg("ce"), C)
    return embed.init_variables(model, SIZE, seed=0)


def setup(method, variables, data, **over):
    cfg = tiny_cfg(method, **over)
    model = embed.build_model(cfg, C)
    v = variables
    if not model.num_classes:
        v = {"params": {k: p for k, p in v["params"].items() if k != "fc2"}, "batch_stats": v["batch_stats"]}
    tx = embed.make_optimizer(cfg, steps_per_epoch=N // B)
    state = embed.create_state(cfg, v, tx, data[1])
    return cfg, model, tx, state


@pytest.fixture(scope="module")
def compiled():
    """Jitted steps shared by the tests of a module, keyed by (method, overrides), each with the
    list its trace counter appends to: every test that reuses a step also checks it is not retraced."""
    cache = {}

    def get(method, cfg, model, tx):
        key = (method, cfg.shuffle_bn, tuple(cfg.m_schedule_epochs))
        if key not in cache:
            traces = []
            inner = embed.make_step(cfg, model, tx)

            def counted(*args):
                traces.append(1)               # runs only while tracing
                return inner(*args)

            cache[key] = (embed.compile_step(counted), traces)
        return cache[key]

    yield get
    for (method, *_), (_, traces) in cache.items():
        assert len(traces) == 1, f"{method}: the step was traced {len(traces)} times"


def _forward(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)


def batch(data, idx):
    images, labels = data
    return jnp.asarray(images[idx]), jnp.asarray(labels[idx]), jnp.asarray(idx, jnp.int32)


@pytest.mark.parametrize("method", embed.METHODS)
def test_step_compiles_once_and_loss_falls(method, variables, data, compiled):
    cfg, model, tx, state = setup(method, variables, data)
    step, traces = compiled(method, cfg, model, tx)
    idx = np.arange(0, N, N // B)       # two of each class
    x, y, i = batch(data, idx)
    seen = []
    for t in range(6):
        old_bank = state.bank
        state, metrics = step(state, x, y, i, jnp.int32(t // 3))
        assert old_bank.is_deleted(), "the state (and its bank) should be donated to the step"
        seen.append(float(metrics["loss"]))
    assert len(traces) == 1, f"{method}: the step was traced {len(traces)} times"
    assert int(state.step) == 6
    assert all(np.isfinite(seen))
    assert seen[-1] < seen[0], f"{method}: loss did not fall: {seen}"
    assert (state.ema_params is not None) == method.endswith("-mu")


def test_mb_step_reads_bank_before_writing(variables, data, compiled):
    """The loss reads the incoming bank; the rows are then written with the epoch's momentum (here
    the authors' code's schedule, 0.8 from epoch 80; the paper's fixed 0.5 by default)."""
    cfg, model, tx, state = setup("snca-ce-mb", variables, data, m_schedule_epochs=(80, 120),
                                  m_schedule_values=(0.8, 0.9))
    idx = np.array([0, 5, 9, 14, 17, 22, 27, 31])
    x, y, i = batch(data, idx)
    old_bank = np.asarray(state.bank)
    out, _ = _forward(model, {"params": state.params, "batch_stats": state.batch_stats}, x)
    f = np.asarray(out["embedding"])
    want_snca = float(losses.snca_loss(out["embedding"], y, i, state.bank, state.bank_labels, cfg.sigma))
    want_ce = float(losses.cross_entropy(out["logits"], y))
    step, _ = compiled("snca-ce-mb", cfg, model, tx)
    new, metrics = step(state, x, y, i, jnp.int32(80))
    np.testing.assert_allclose(float(metrics["snca"]), want_snca, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss"]), want_ce + cfg.lam * want_snca, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["m"]), 0.8)            # schedule: 0.8 from epoch 80
    rows = 0.8 * old_bank[idx] + 0.2 * f
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    got = np.asarray(new.bank)
    np.testing.assert_allclose(got[idx], rows, rtol=1e-4, atol=1e-5)
    cfg, model, tx, state = setup("snca-ce-mb", variables, data)
    _, metrics = compiled("snca-ce-mb", cfg, model, tx)[0](state, x, y, i, jnp.int32(80))
    np.testing.assert_allclose(float(metrics["m"]), 0.5)            # the paper's m, at any epoch
    rest = np.setdiff1d(np.arange(N), idx)
    np.testing.assert_array_equal(got[rest], old_bank[rest])


@pytest.mark.parametrize("shuffle_bn", [False, True])
def test_mu_step_momentum_encoder(variables, data, shuffle_bn, compiled):
    cfg, model, tx, state = setup("snca-ce-mu", variables, data, shuffle_bn=shuffle_bn)
    idx = np.arange(8, 16)
    x, y, i = batch(data, idx)
    host = jax.device_get(state)
    out_aux, aux_mut = _forward(model, {"params": state.ema_params, "batch_stats": state.ema_batch_stats}, x)
    step, _ = compiled("snca-ce-mu", cfg, model, tx)
    new, metrics = step(state, x, y, i, jnp.int32(0))
    new = jax.device_get(new)
    # bank rows = the momentum encoder's normalised features (theta_aux before its update)
    np.testing.assert_allclose(new.bank[idx], np.asarray(out_aux["embedding"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(new.bank[idx], axis=1), 1.0, rtol=1e-5)
    # EMA: theta_aux = m theta_aux + (1 - m) theta^(t+1)
    m = cfg.m
    jax.tree.map(lambda e, old, p: np.testing.assert_allclose(e, m * old + (1 - m) * p, rtol=1e-5, atol=1e-7),
                 new.ema_params, host.ema_params, new.params)
    # its own batch statistics moved, as the online encoder's did
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 new.ema_batch_stats, jax.device_get(aux_mut["batch_stats"]))
    np.testing.assert_allclose(float(metrics["m"]), 0.999)


def test_baselines_store_embeddings_in_bank(variables, data, compiled):
    cfg, model, tx, state = setup("triplet", variables, data)
    idx = np.arange(0, 8)
    x, y, i = batch(data, idx)
    out, _ = _forward(model, {"params": state.params, "batch_stats": state.batch_stats}, x)
    step, _ = compiled("triplet", cfg, model, tx)
    new, metrics = step(state, x, y, i, jnp.int32(0))
    np.testing.assert_allclose(np.asarray(new.bank)[idx], np.asarray(out["embedding"]), rtol=1e-4, atol=1e-5)
    assert "ce" not in metrics and "triplet" in metrics


def test_optimizer_matches_torch_sgd():
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg("ce", lr=0.1, lr_decay_every=1)
    tx = embed.make_optimizer(cfg, steps_per_epoch=2)       # lr halves every 2 steps
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.array([0.3, -0.1, 0.2], np.float32) * (k + 1) for k in range(5)]
    p = jnp.asarray(w0)
    opt_state = tx.init(p)
    for g in grads:
        upd, opt_state = tx.update(jnp.asarray(g), opt_state, p)
        p = optax.apply_updates(p, upd)
    tw = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([tw], lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for g in grads:
        tw.grad = torch.tensor(g)
        opt.step()
        sched.step()
    np.testing.assert_allclose(np.asarray(p), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_lr_schedule_halves_every_30_epochs():
    cfg = configs.get("snca-ce-mb")
    sched = embed.lr_schedule(cfg, steps_per_epoch=10)
    for epoch, lr in [(0, 0.01), (29, 0.01), (30, 0.005), (60, 0.0025), (99, 0.00125)]:
        np.testing.assert_allclose(float(sched(epoch * 10 + 9)), lr, rtol=1e-6)


def test_configs_and_method_specs():
    for method in embed.METHODS:
        cfg = configs.get(method)
        assert cfg.method == method
        assert embed.method_spec(method).bank_update == ("mu" if method.endswith("-mu") else
                                                        "mb" if method.endswith("-mb") else "store")
        for field in ("sigma", "lam", "dim", "epochs", "image_size", "batch_size", "lr", "m"):
            assert field in cfg
    assert configs.get("snca-ce-mu").m == 0.999 and configs.get("snca-ce-mb").m == 0.5
    assert configs.get("triplet").triplet_margin == 0.2
    with pytest.raises(ValueError, match="unknown embedding method"):
        embed.method_spec("snca")


@pytest.mark.parametrize("method,over", [
    ("snca-ce-mb", dict(lam=0.3, sigma=0.2, margin=0.05)),
    ("snca-mu", dict(lam=0.3, sigma=0.07)),
    ("dcnn", dict(lam=0.3, dcnn_tau1=0.5, dcnn_tau2=0.1)),
    ("dcnn", dict(lam=0.3, dcnn_metric="contrastive", contrastive_margin=0.7)),
    ("triplet", dict(lam=0.3, triplet_margin=0.3, triplet_mining="hard")),
    ("ce", dict(lam=0.3)),
])
def test_loss_fn_combines_the_method_s_terms_with_its_settings(method, over, variables, data):
    """The training loss is CE + lambda * metric (or the metric alone, or CE alone), each term the loss
    function of :mod:`rsjax.losses` called with the config's settings, not their defaults."""
    cfg, model, _, state = setup(method, variables, data, **over)
    x, y, idx = jnp.asarray(data[0][:B]), jnp.asarray(data[1][:B]), jnp.arange(B, dtype=jnp.int32)
    loss, (terms, f, _) = embed.make_loss_fn(cfg, model)(state.params, state, x, y, idx)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=True,
                      mutable=["batch_stats"])[0]
    np.testing.assert_allclose(f, out["embedding"], rtol=1e-6, atol=1e-6)
    metric = {
        "snca-ce-mb": lambda: losses.snca_loss(f, y, idx, state.bank, state.bank_labels, 0.2, 0.05),
        "snca-mu": lambda: losses.snca_loss(f, y, idx, state.bank, state.bank_labels, 0.07, 0.0),
        "triplet": lambda: losses.triplet_loss(f, y, 0.3, "hard"),
        "ce": lambda: 0.0,
    }.get(method, lambda: (losses.dcnn_loss(f, y, 0.5, 0.1) if cfg.dcnn_metric == "hinge"
                           else losses.contrastive_loss(f, y, 0.7)))()
    ce = losses.cross_entropy(out["logits"], y) if model.num_classes else None
    want = metric if ce is None else ce + 0.3 * metric
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_init_bank_in_state(variables, data):
    _, _, _, state = setup("snca-mb", variables, data)
    s = 1 / np.sqrt(8 / 3)
    bank = np.asarray(state.bank)
    assert bank.shape == (N, 8) and np.abs(bank).max() <= s
    np.testing.assert_array_equal(np.asarray(state.bank_labels), data[1])
    normalised = embed.create_state(tiny_cfg("snca-mb", bank_init_normalise=True), variables, optax.sgd(0.1), data[1])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(normalised.bank), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(normalised.bank), np.asarray(bank_lib.l2_normalize(state.bank)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"the model's embedding has 8 dimensions but cfg.dim is 16.*cfg.dim = 8"):
        embed.create_state(tiny_cfg("snca-mb", dim=16), variables, optax.sgd(0.1), data[1])


def test_embed_eval_mode_pads_last_batch(variables, data):
    cfg = tiny_cfg("ce")
    model = embed.build_model(cfg, C)
    e = embed.embed(model, variables, data[0][:11], batch_size=4)
    full = jax.jit(lambda v, x: model.apply(v, x, train=False)["embedding"])(variables, jnp.asarray(data[0][:11]))
    np.testing.assert_allclose(e, np.asarray(full), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\), got shape \(16, 16, 3\); for one image pass images\[None\]"):
        embed.embed(model, variables, data[0][0])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\), got shape \(11, 16, 16\)\.$"):
        embed.embed(model, variables, data[0][:11, ..., 0])


@pytest.mark.parametrize("method", ["snca-ce-mb", "snca-ce-mu", "ce"])
def test_compiled_step_updates_the_donated_bank_in_place(method, variables, data):
    """No full copy of the bank or of any convolution kernel (online or momentum encoder) in the
    compiled step, on this machine's default backend: XLA copies them every step when the writes
    are not ordered after the reads (on CPU the bank twice and each kernel once; on an H200 the
    bank twice here, also when the ordering zero was ``float(s == s) * 0``, which XLA:GPU folded)."""
    import re
    cfg, model, tx, state = setup(method, variables, data)
    n, d = state.bank.shape

    def copies():
        hlo = jax.jit(embed.make_step(cfg, model, tx), donate_argnums=(0,)).lower(
            state, jnp.asarray(data[0][:B]), jnp.asarray(data[1][:B]), jnp.arange(B, dtype=jnp.int32),
            jnp.int32(0)).compile().as_text()
        return (re.findall(rf"= f32\[{n},{d}\]\{{[0-9,]*\}} copy\(", hlo),
                re.findall(r"copy\(%state_(?:ema_)?params\S*kernel", hlo))

    assert copies() == ([], [])
    if jax.default_backend() == "cpu":           # the patterns do find the copies XLA:CPU makes unordered
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(embed, "_ordered_after", lambda scalar, tree: tree)
            bank_copies, kernel_copies = copies()
        assert kernel_copies and (bank_copies or method == "ce"), (bank_copies, kernel_copies)   # CE reads no bank


@settings(max_examples=25)
@given(scalar=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                        st.sampled_from([np.nan, np.inf, -np.inf, -0.0])),
       values=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=6))
def test_ordered_after_returns_the_tree_for_any_scalar(scalar, values):
    """The ordering zero is exact for every scalar (NaN and infinities too) and keeps dtypes."""
    tree = {"f32": jnp.asarray(values, jnp.float32), "bf16": jnp.asarray(values, jnp.bfloat16)}
    out = jax.jit(embed._ordered_after)(jnp.float32(scalar), tree)
    for k in tree:
        assert out[k].dtype == tree[k].dtype
        np.testing.assert_array_equal(np.asarray(out[k], np.float32), np.asarray(tree[k], np.float32))
