"""The MS2A-Net benchmark's pieces: the jaxpr FLOP counter against hand counts, one tiny
side-by-side measurement (rsjax and PyTorch agree on the first loss; every figure is there), and
the convolution probe."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.flops import count_flops


def test_count_flops_dot_conv_scan_and_dead_code():
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert count_flops(jnp.matmul, a, b) == 2 * 3 * 5 * 7
    x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_flops(conv, x, k) == 2 * (2 * 8 * 8 * 4) * 3 * 9
    # a scan body counts once per iteration (XLA's cost analysis counts it once)
    body = lambda c, _: (c @ jnp.ones((5, 5)), None)
    assert count_flops(lambda c: lax.scan(body, c, None, length=6)[0], a) == 6 * 2 * 3 * 5 * 5
    # the gradient w.r.t. the kernel only: dX is dead code and not counted
    g = jax.grad(lambda k, x: jnp.sum(conv(x, k)))
    assert count_flops(g, k, x) == 2 * (2 * 8 * 8 * 4) * 3 * 9


def test_ms2anet_step_flops_match_the_convolutions():
    """The counted FLOPs of a training step are the convolutions' forward + weight gradient
    (the input needs no gradient), the decoder's three GEMMs and the small ones; the banded GEMM
    pads each row by the largest halo (8 columns each side), a few percent at real widths."""
    import optax
    from rsjax.models.ms2anet import MS2ANet
    from rsjax.train.hsi import init_state, train_step
    h, w, d = 9, 80, 7
    x = jnp.ones((1, h, w, d))
    model, tx = MS2ANet(d), optax.adam(1e-3)
    flops = count_flops(functools.partial(train_step, model=model, tx=tx, lam=0.1), init_state(model, x, tx, 0), x)
    p = h * w
    convs = p * 2 * (3 * 25 * d * 12 + 9 * d * 3)          # spatial 5x5 x3 and spectral 3x3 (forward)
    dec = p * 2 * 9 * 6 * d                                  # decoder 3x3, 6 -> D
    lower = 2 * convs + 3 * dec                              # forward + weight gradient (+ the decoder's dX)
    assert lower <= flops <= 1.3 * lower, (flops, lower)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_shape_tiny_runs_both_frameworks():
    pytest.importorskip("torch")
    from benchmarks.ms2anet_step import bench_shape
    cube = np.random.default_rng(0).random((12, 17, 9), dtype=np.float32)
    r = bench_shape("tiny", cube, reps=1, chunk=2, log=lambda *a, **k: None)
    np.testing.assert_allclose(r["loss_rsjax"], r["loss_torch"], rtol=1e-4)
    for key in ("rsjax_chunk_s_per_iter", "rsjax_step_s_per_iter", "torch_s_per_iter", "flops_per_iter",
                "ratio_chunk", "ratio_step", "rsjax_compile_chunk_s", "rss_peak_rsjax_bytes", "rss_peak_torch_bytes"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio_chunk"] == pytest.approx(r["rsjax_chunk_s_per_iter"] / r["torch_s_per_iter"])


@pytest.mark.parametrize("spf_odd", ["crop", "resize"])
def test_torch_module_computes_rsjax_loss(spf_odd):
    """benchmarks/torch_ms2anet.py (timed by the benchmark, trained by experiments/reference_torch.py)
    computes rsjax's loss from rsjax's parameters, odd H and W included."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_ms2anet import TorchMS2ANet
    from rsjax.models.ms2anet import MS2ANet, ms2anet_loss
    from rsjax.train.hsi import apply_model
    x = jax.random.uniform(jax.random.key(0), (1, 7, 9, 5))
    model = MS2ANet(5, spf_odd=spf_odd)
    variables = model.init(jax.random.key(1), x)
    out, _ = apply_model(model, variables["params"], variables["batch_stats"], x)
    tm = TorchMS2ANet(5, spf_odd=spf_odd).load_rsjax(variables["params"])
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(float(tm.loss(xt, 0.1).detach()), float(ms2anet_loss(x, out, 0.1)), rtol=1e-5)


def test_reference_torch_training_is_seeded():
    pytest.importorskip("torch")
    from experiments.reference_torch import train_torch
    cube = np.random.default_rng(0).random((7, 9, 5), dtype=np.float32)
    a, b, c = (train_torch(cube, seed, iters=3, threads=1) for seed in (0, 0, 1))
    assert a.shape == (7, 9, 36) and np.all(a >= 0)      # M' after ReLU
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bench_shape_bfloat16_and_the_precision_modes():
    """The GPU run's pieces, on whatever device this machine has (PyTorch on the one JAX uses):
    mixed precision in both frameworks (first losses within bfloat16 rounding), and an unknown
    precision mode named in the error."""
    pytest.importorskip("torch")
    from benchmarks.common import precision, torch_device
    from benchmarks.ms2anet_step import bench_shape
    cube = np.random.default_rng(1).random((10, 13, 8), dtype=np.float32)
    with precision("bfloat16"):
        r = bench_shape("tiny", cube, reps=1, chunk=2, log=lambda *a, **k: None, dtype="bfloat16")
    assert r["dtype"] == "bfloat16" and r["device"] == torch_device().type
    np.testing.assert_allclose(r["loss_rsjax"], r["loss_torch"], rtol=3e-2)
    with pytest.raises(ValueError, match="fp16"):
        with precision("fp16"):
            pass


def test_conv_probe_tiny():
    pytest.importorskip("torch")
    from benchmarks.conv_probe import CONVS, probe
    rows = probe(6, 7, "float32", reps=1, inner=1)
    assert [r["conv"] for r in rows] == [c[0] for c in CONVS]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0
                   for k in ("rsjax_cnhw_s", "xla_nhwc_s", "polyphase_cnhw_s", "torch_s", "flops"))


@pytest.mark.parametrize("module,argv,says", [
    ("ms2anet_step", ["--shapes", "trento,foo"], "must be comma-separated names among trento, salinas-a"),
    ("ms2anet_step", ["--reps", "0"], "--reps: must be a positive integer"),
    ("snca_step", ["--no-steps", "--no-scaling"], "leave nothing to measure"),
    ("snca_step", ["--ns", "0"], "--ns: must be a positive number"),
    ("resnet_probe", ["--reps", "0"], "--reps: must be a positive integer"),
    ("conv_probe", ["--shape", "0", "4"], "--shape: must be a positive integer"),
])
def test_benchmark_arguments_that_measure_nothing_are_refused(module, argv, says, capsys):
    """Before: --reps 0 fell back to the default, --shapes foo was a traceback, empty runs printed NaN tables."""
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(f"benchmarks.{module}").main(argv)
    assert says in capsys.readouterr().err
