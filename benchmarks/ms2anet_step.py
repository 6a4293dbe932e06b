"""Seconds per MS2A-Net training iteration (forward, backward, Adam): rsjax against PyTorch.

    python -m benchmarks.ms2anet_step            # Trento's shape (166 x 600 x 63, random) and Salinas-A
    python -m benchmarks.ms2anet_step --quick    # smoke run: small shapes, one repetition
    python -m benchmarks.ms2anet_step --json     # one JSON object with every figure
    python -m benchmarks.ms2anet_step --dtypes float32 bfloat16   # on a GPU: PyTorch on CUDA, both precisions

rsjax runs its real training code: ``rsjax.train.hsi.train_chunk`` (``--chunk`` iterations in one
compiled ``lax.scan``, as ``rsjax cluster`` trains) and ``train_step`` (one jitted call per
iteration). PyTorch runs the same math eagerly (``benchmarks/torch_ms2anet.py``, Adam, all CPU
threads), loaded with rsjax's initial parameters; the two losses are checked to agree first. The
repetitions are interleaved (rsjax chunk, rsjax step, PyTorch, then again) and medians reported,
so load from other processes hits both alike. FLOPs per iteration are the matrix-multiply and
convolution FLOPs of ``train_step`` counted from its jaxpr (``benchmarks/flops.py``; XLA's cost
analysis counts a ``lax.scan`` body once, and rsjax's convolutions are banded scans); the GEMM peak is measured in the same run (best of a large
``jnp`` and ``numpy`` float32 matmul); memory is the peak resident set size while each framework
runs (sampled every 5 ms) and XLA's own buffer accounting.

On a GPU (JAX's default backend) PyTorch runs on CUDA (``cudnn.benchmark``; the lowest loss
kept on the device, no sync per iteration), rsjax uses XLA's convolutions
(``rsjax.models.layers.gemm_forms``), a chunk is 20 iterations, the GEMM peak is an 8192^3
product in the run's precision, and each precision mode of ``--dtypes``
(:func:`benchmarks.common.precision`) is one run in ``runs``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import threading
import time

import numpy as np

from benchmarks.common import (PRECISIONS, gpu_memory, machine, model_dtype, on_gpu, precision, settle,
                               torch_device, torch_sync)
from rsjax.cli import positive_int


# ----------------------------------------------------------------------------- memory sampling

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size while the block runs (a 5 ms sampling thread)."""

    def __init__(self):
        self.peak = 0

    def __enter__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


# ----------------------------------------------------------------------------- machine figures

def gemm_peak(n: int = 2048, reps: int = 3, dtype: str = "float32") -> dict:
    """GEMM GFLOP/s of this machine now: a jitted jnp matmul and numpy's BLAS (CPU only),
    interleaved, median of ``reps``; the peak is the better of the two. On a GPU: the jnp matmul
    alone, in the precision mode ``dtype`` (open :func:`benchmarks.common.precision` around it),
    ``reps`` x 10 products per timing."""
    import jax
    import jax.numpy as jnp
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    from rsjax.models.layers import compute_dtype
    jdt = compute_dtype(model_dtype(dtype))
    ja, jb = jnp.asarray(a, jdt), jnp.asarray(b, jdt)
    mm = jax.jit(jnp.matmul)
    mm(ja, jb).block_until_ready()
    gpu = on_gpu()
    inner = 10 if gpu else 1
    if not gpu:
        a @ b
    tj, tn = [], []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            c = mm(ja, jb)
        c.block_until_ready()
        tj.append((time.perf_counter() - t) / inner)
        if not gpu:
            t = time.perf_counter()
            a @ b
            tn.append(time.perf_counter() - t)
    flops = 2.0 * n ** 3
    out = {"gemm_n": n, "gemm_dtype": dtype, "jnp_gflops": flops / np.median(tj) / 1e9}
    if tn:
        out["numpy_gflops"] = flops / np.median(tn) / 1e9
    out["peak_gflops"] = max(out["jnp_gflops"], out.get("numpy_gflops", 0.0))
    return out


# ----------------------------------------------------------------------------- one shape

SHAPES = ("trento", "salinas-a")


def _shape_names(text: str) -> list[str]:
    """argparse type of --shapes: comma-separated names of :data:`SHAPES`."""
    names = [n for n in text.split(",") if n]
    if not names or any(n not in SHAPES for n in names):
        raise argparse.ArgumentTypeError(f"must be comma-separated names among {', '.join(SHAPES)}, got {text!r}")
    return names


def _cube(name: str, quick: bool) -> np.ndarray:
    if name == "trento":
        shape = (40, 150, 63) if quick else (166, 600, 63)
        return np.random.default_rng(0).random(shape, dtype=np.float32)
    if name == "salinas-a":
        from rsjax.data.hsi import load_scene, minmax_scale
        return minmax_scale(load_scene("salinas-a").cube).astype(np.float32)
    raise ValueError(name)


def bench_shape(name: str, cube: np.ndarray, reps: int, chunk: int, lam: float = 0.1, lr: float = 1e-3,
                log=print, dtype: str = "float32") -> dict:
    """One cube: compile, check the first losses agree, then interleaved repetitions. ``dtype`` is
    a precision mode of :func:`benchmarks.common.precision` (open that context around the call)."""
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.flops import count_flops
    from benchmarks.torch_ms2anet import TorchMS2ANet, TorchTrainer
    from rsjax.models.layers import compute_dtype
    from rsjax.models.ms2anet import MS2ANet, ms2anet_loss
    from rsjax.train.hsi import adam, apply_model, init_state, prepare_input, train_chunk, train_step

    h, w, d = cube.shape
    x = jnp.asarray(cube)[None]
    bf16 = model_dtype(dtype) == "bfloat16"
    model = MS2ANet(d, dtype=compute_dtype(model_dtype(dtype)))
    tx = adam(lr)                                   # the optimiser rsjax cluster trains with
    dev = torch_device()
    res = {"shape": [h, w, d], "pixels": h * w, "chunk": chunk, "reps": reps, "dtype": dtype, "device": dev.type}

    # rsjax: compile (timed), FLOPs and XLA's memory accounting
    state_chunk = init_state(model, x, tx, 0)
    state_step = init_state(model, x, tx, 0)
    params0 = jax.device_get(state_chunk.params)
    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, lam=lam), donate_argnums=(0,))
    chunk_fn = jax.jit(functools.partial(train_chunk, n=chunk, model=model, tx=tx, lam=lam), donate_argnums=(0,))
    t = time.perf_counter()
    step_c = step_fn.lower(state_step, x).compile()
    res["rsjax_compile_step_s"] = time.perf_counter() - t
    t = time.perf_counter()
    chunk_c = chunk_fn.lower(state_chunk, x).compile()
    res["rsjax_compile_chunk_s"] = time.perf_counter() - t
    # per iteration of the model's math: the scene prepared once (as train_chunk does), so the
    # identity GEMMs that transpose it (rsjax.models.layers.transpose_by_gemm) are not counted
    res["flops_per_iter"] = count_flops(functools.partial(train_step, model=model, tx=tx, lam=lam), state_step,
                                        prepare_input(model, x))
    cost = step_c.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    res["xla_cost_analysis_flops"] = float(cost["flops"])   # counts a scan body once: an undercount here
    mem = step_c.memory_analysis()
    if mem is not None:
        res["xla_step_temp_bytes"] = int(mem.temp_size_in_bytes)
        res["xla_step_arg_bytes"] = int(mem.argument_size_in_bytes)
    mem = chunk_c.memory_analysis()
    if mem is not None:
        res["xla_chunk_temp_bytes"] = int(mem.temp_size_in_bytes)

    # PyTorch: same initial parameters; the losses of the first iteration must agree
    torch.manual_seed(0)
    tmodel = TorchMS2ANet(d).load_rsjax(params0).to(dev)
    trainer = TorchTrainer(tmodel, lr=lr, lam=lam, amp_dtype=torch.bfloat16 if bf16 else None)
    xt = torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1))[None]).to(dev)
    out, _ = jax.jit(functools.partial(apply_model, model))(state_chunk.params, state_chunk.batch_stats, x)
    loss_j = float(ms2anet_loss(x, out, lam))
    loss_t = float(trainer.step(xt))
    res["loss_rsjax"], res["loss_torch"] = loss_j, loss_t
    if not np.isclose(loss_j, loss_t, rtol=3e-2 if bf16 else 1e-4, atol=1e-6):   # bfloat16: 8-bit mantissas
        raise AssertionError(f"{name}: first-iteration losses differ: rsjax {loss_j} vs PyTorch {loss_t}")

    # warm-up (first calls touch fresh memory)
    state_chunk, losses = chunk_c(state_chunk, x)
    losses.block_until_ready()
    state_step, loss = step_c(state_step, x)
    loss.block_until_ready()

    t_chunk, t_step, t_torch = [], [], []
    peak_j, peak_t = 0, 0
    base_rss = _rss_bytes()
    for r in range(reps):
        settle()
        with PeakRSS() as pk:
            t = time.perf_counter()
            state_chunk, losses = chunk_c(state_chunk, x)
            losses.block_until_ready()
            t_chunk.append((time.perf_counter() - t) / chunk)
            t = time.perf_counter()
            state_step, loss = step_c(state_step, x)
            loss.block_until_ready()
            t_step.append(time.perf_counter() - t)
        peak_j = max(peak_j, pk.peak)
        settle()
        with PeakRSS() as pk:
            t = time.perf_counter()
            for _ in range(chunk):
                trainer.step(xt)
            torch_sync()
            t_torch.append((time.perf_counter() - t) / chunk)
        peak_t = max(peak_t, pk.peak)
        log(f"  {name} rep {r + 1}/{reps}: rsjax chunk {t_chunk[-1]:.3f} s/iter, rsjax step {t_step[-1]:.3f} s, "
            f"PyTorch {t_torch[-1]:.3f} s/iter")
    if not np.all(np.isfinite(np.asarray(losses))):
        raise FloatingPointError(f"{name}: non-finite rsjax loss")

    med = lambda v: float(np.median(v))
    res.update({
        "rsjax_chunk_s_per_iter": med(t_chunk), "rsjax_step_s_per_iter": med(t_step), "torch_s_per_iter": med(t_torch),
        "rsjax_chunk_times": t_chunk, "rsjax_step_times": t_step, "torch_times": t_torch,
        "rss_base_bytes": base_rss, "rss_peak_rsjax_bytes": peak_j, "rss_peak_torch_bytes": peak_t,
        **gpu_memory(),
    })
    res["ratio_chunk"] = res["rsjax_chunk_s_per_iter"] / res["torch_s_per_iter"]
    res["ratio_step"] = res["rsjax_step_s_per_iter"] / res["torch_s_per_iter"]
    for key, sec in (("rsjax_chunk", res["rsjax_chunk_s_per_iter"]), ("rsjax_step", res["rsjax_step_s_per_iter"]),
                     ("torch", res["torch_s_per_iter"])):
        res[f"{key}_gflops"] = res["flops_per_iter"] / sec / 1e9
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: Trento shape cropped to 40 x 150, 1 repetition")
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.add_argument("--reps", type=positive_int, default=None, help="interleaved repetitions (default 5, quick 1)")
    p.add_argument("--chunk", type=positive_int, default=None, help="iterations per rsjax train_chunk call and per PyTorch "
                                                           "timing (default 4, quick 2)")
    p.add_argument("--shapes", type=_shape_names, default=["trento", "salinas-a"], help="comma-separated: trento, salinas-a")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=PRECISIONS,
                   help="precision modes (GPU: float32 = no TF32, tf32, bfloat16 = mixed)")
    args = p.parse_args(argv)
    gpu = on_gpu()
    reps = args.reps or (1 if args.quick else 5)
    chunk = args.chunk or (2 if args.quick else (20 if gpu else 4))

    import torch
    torch.set_num_threads(os.cpu_count())
    torch.backends.cudnn.benchmark = True     # fixed shapes: let cuDNN pick, as XLA autotunes
    log = (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a, **k: print(*a, **k, flush=True))

    result = {"benchmark": "ms2anet_step", "quick": args.quick, "machine": machine(), "runs": []}
    gemm_n = 1024 if args.quick else (8192 if gpu else 2048)
    for dtype in args.dtypes:
        with precision(dtype):
            run = {"dtype": dtype, "gemm_before": gemm_peak(gemm_n, dtype=dtype)}
            log(f"[{dtype}] GEMM peak now: {run['gemm_before']['peak_gflops']:.1f} GFLOP/s")
            shapes = {}
            for name in args.shapes:
                cube = _cube(name, args.quick)
                log(f"{name}: {cube.shape} {dtype}")
                shapes[name] = bench_shape(name, cube, reps, chunk, log=log, dtype=dtype)
                if args.json:                                # kept in the log should the run be cut short
                    log("record " + json.dumps(shapes[name]))
            run["gemm_after"] = gemm_peak(gemm_n, dtype=dtype)
        peak = max(run["gemm_before"]["peak_gflops"], run["gemm_after"]["peak_gflops"])
        run["gemm_peak_gflops"] = peak
        for r in shapes.values():
            for key in ("rsjax_chunk", "rsjax_step", "torch"):
                r[f"{key}_fraction_of_peak"] = r[f"{key}_gflops"] / peak
        run["shapes"] = shapes
        result["runs"].append(run)
    # the first run's figures at the top level too, where earlier JSON files had them
    result.update({k: v for k, v in result["runs"][0].items() if k != "dtype"})
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    m = result["machine"]
    print(f"\nMS2A-Net training iteration, {m.get('gpu', m['cpu'])} ({m['cpu_count']} CPU cores), "
          f"jax {m['jax']}, torch {m['torch']}, {m['date']}")
    mb = lambda b: f"{b / 2**20:.0f} MiB"
    for run in result["runs"]:
        peak = run["gemm_peak_gflops"]
        print(f"\n[{run['dtype']}] GEMM peak ({run['gemm_before']['gemm_n']}^3, best of jnp/numpy): {peak:.1f} GFLOP/s")
        for name, r in run["shapes"].items():
            h, w, d = r["shape"]
            print(f"\n{name} {h} x {w} x {d} ({r['dtype']}): {r['flops_per_iter'] / 1e9:.2f} GFLOP per iteration "
                  "(GEMM/conv FLOPs counted from the jaxpr)")
            print(f"  {'':28s} {'s/iter':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'ratio':>7s}")
            for label, key, ratio in (("rsjax train_chunk (scan)", "rsjax_chunk", r["ratio_chunk"]),
                                      ("rsjax train_step (jit)", "rsjax_step", r["ratio_step"]),
                                      ("PyTorch eager", "torch", 1.0)):
                print(f"  {label:28s} {r[key + '_s_per_iter']:8.4f} {r[key + '_gflops']:8.1f} "
                      f"{100 * r[key + '_fraction_of_peak']:7.0f}% {ratio:7.2f}")
            print(f"  compile: train_chunk {r['rsjax_compile_chunk_s']:.1f} s, train_step {r['rsjax_compile_step_s']:.1f} s; "
                  f"peak RSS while running: rsjax {mb(r['rss_peak_rsjax_bytes'])}, PyTorch {mb(r['rss_peak_torch_bytes'])} "
                  f"(base {mb(r['rss_base_bytes'])}); XLA temp buffers: step {mb(r.get('xla_step_temp_bytes', 0))}, "
                  f"chunk {mb(r.get('xla_chunk_temp_bytes', 0))}")
            if "jax_peak_bytes" in r:
                print(f"  GPU memory peak so far: XLA {mb(r['jax_peak_bytes'])}, PyTorch {mb(r['torch_peak_bytes'])}")
    print(f"\nprocess max RSS {mb(result['max_rss_bytes'])}; ratio = rsjax time / PyTorch time (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
