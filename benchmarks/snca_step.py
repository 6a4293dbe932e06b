"""Speed of rsjax's SNCA-CE training steps against PyTorch, measured side by side, and how the
SNCA loss plus bank update scales with the bank size N.

1. Training steps. Images per second of one SNCA-CE(MB) and SNCA-CE(MU) step (ResNet18,
   ImageNet layout, FC1 512 -> 128, FC2 128 -> 21; batch 64; bank N = 882 rows, 21 classes,
   D = 128; CE + SNCA with sigma 0.1 against the incoming bank, own row excluded; SGD Nesterov
   0.9, weight decay 1e-4; MB: bank momentum write, MU: momentum encoder m = 0.999 whose
   features overwrite the bank rows). rsjax runs its real step
   (``rsjax.train.embed.make_step`` + ``compile_step``, state donated, compiled ahead of time
   and timed); PyTorch runs :class:`benchmarks.torch_resnet.TorchSNCATrainer` eagerly with
   ``torch.set_num_threads(os.cpu_count())``, and again with one thread (on a shared machine
   OpenMP with every core can lose badly to oversubscription; the faster of the two is "best").
   Both start from the same weights (PyTorch's, converted with ``rsjax.models.convert``) and the
   same bank, and the losses of their first steps are printed side by side (they agree to
   float32 rounding). Repetitions of the contenders rotate (each also goes first in turn), so
   load from other processes hits all alike; each figure is the median over repetitions.
   Also reported: how many full copies of the bank rsjax's compiled step makes.
2. Bank scaling. One jitted call: forward + backward of ``rsjax.losses.snca_loss`` with
   respect to the batch features ``f`` (B = 64, D = 128) plus ``rsjax.bank.momentum_write``,
   the bank donated, for N = 1e3 .. 1e6. It is checked in place: no bank-sized ``copy`` in the
   compiled HLO and the same buffer returned (see :func:`_loss_and_write` for the ordering this
   needs on XLA:CPU; the unordered composition is timed alongside). Printed: time per call,
   time / N, and the least-squares log-log slope of time against N (linear cost is slope 1; the
   bar is <= ~1.1), plus the slope between the two largest N.

PyTorch's OpenMP keeps its default wait policy (libgomp spins a while after each parallel
region, then sleeps; ``OMP_WAIT_POLICY`` set by the caller is respected and printed), and an
untimed pause after every repetition (:func:`benchmarks.common.settle`) lets each contender's
threads go idle before the next one is timed. Until 2026-11-27 this script set
``OMP_WAIT_POLICY=PASSIVE``, which slowed PyTorch's 64 px step by about 11% on the 2-core Xeon
and so flattered rsjax (``benchmarks/README.md``).

Usage::

    python -m benchmarks.snca_step            # 64 and 128 px, N up to 1e6 (about 2-7 minutes on 2 cores)
    python -m benchmarks.snca_step --quick    # smoke run: 64 px, fewer repetitions, N up to 1e5
    python -m benchmarks.snca_step --json     # one JSON object with every figure on stdout
    python -m benchmarks.snca_step --dtypes float32 bfloat16   # on a GPU: PyTorch on CUDA, both precisions

On a GPU (JAX's default backend) PyTorch runs on CUDA with ``cudnn.benchmark``, each repetition
is 20 steps, synchronised at its end, and the precision modes of
:func:`benchmarks.common.precision` set both frameworks alike; rsjax's ResNet then uses XLA's
convolutions (``rsjax.models.layers.gemm_forms``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

import numpy as np

from benchmarks.common import (PRECISIONS, cpu_process_setup, gpu_memory, machine, model_dtype, on_gpu, precision,
                               settle, torch_device, torch_sync)
from rsjax.cli import positive_float, positive_int

N_BANK, N_CLASSES, DIM, BATCH = 882, 21, 128, 64
METHODS = ("snca-ce-mb", "snca-ce-mu")
SIGMA = 0.1


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median(xs):
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------- 1. training steps

def _step_config(method: str, size: int):
    from rsjax import configs
    cfg = configs.get(method)
    cfg.image_size = size
    cfg.batch_size = BATCH
    cfg.num_classes = N_CLASSES
    cfg.dim = DIM
    cfg.sigma = SIGMA
    return cfg


_VARIABLES: dict = {}     # (seed, classes) -> (rsjax variables converted from PyTorch's, same_init)


def _bank_labels() -> np.ndarray:
    return np.repeat(np.arange(N_CLASSES), N_BANK // N_CLASSES).astype(np.int32)   # 42 rows per class


def bench_step(method: str, size: int, *, reps: int, steps_per_rep: int, torch_1thread: bool = True,
               seed: int = 0, dtype: str = "float32") -> dict:
    """rsjax vs PyTorch images/s of one training step of ``method`` at ``size`` px, interleaved.

    ``dtype`` is a precision mode of :func:`benchmarks.common.precision` (open that context around
    the call); on a GPU both frameworks run there."""
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.torch_resnet import TorchResNet18Cls, TorchSNCATrainer
    from rsjax.train import embed

    cfg = _step_config(method, size)
    cfg.dtype = model_dtype(dtype)
    dev = torch_device()
    spec = embed.method_spec(method)
    labels_np = _bank_labels()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N_BANK)
    batches = [perm[k * BATCH:(k + 1) * BATCH].astype(np.int32) for k in range(N_BANK // BATCH)]
    images_np = rng.normal(size=(BATCH, size, size, 3)).astype(np.float32)

    # PyTorch model first: its weights are converted into rsjax's, so both start equal.
    torch.manual_seed(seed)
    tmodel = TorchResNet18Cls(dim=DIM, num_classes=N_CLASSES)
    model = embed.build_model(cfg, N_CLASSES)
    tx = embed.make_optimizer(cfg, steps_per_epoch=N_BANK // BATCH)
    t0 = time.perf_counter()
    key = (seed, model.num_classes)           # parameter shapes do not depend on the image size
    if key not in _VARIABLES:
        try:
            _VARIABLES[key] = (embed.init_variables(model, size, seed, pretrained=tmodel.state_dict()), True)
        except (ValueError, KeyError) as e:   # rsjax's parameter layout changed: time from its own init
            _log(f"  [{method} {size}px] could not load the PyTorch weights into rsjax ({e}); own init")
            _VARIABLES[key] = (embed.init_variables(model, size, seed), False)
    variables, same_init = _VARIABLES[key]
    state = embed.create_state(cfg, variables, tx, labels_np, seed=seed)   # copies: the cache survives donation
    init_s = time.perf_counter() - t0
    tbank = torch.from_numpy(np.array(state.bank)).to(dev)    # a copy: the rsjax step donates its bank
    tmodel.to(dev)
    trainer = TorchSNCATrainer(tmodel, tbank, torch.from_numpy(labels_np).to(dev), bank_update=spec.bank_update,
                               lr=float(cfg.lr), momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov),
                               weight_decay=float(cfg.weight_decay), sigma=float(cfg.sigma),
                               lam=float(cfg.lam), bank_m=float(cfg.m) if spec.bank_update == "mb" else 0.5,
                               ema_m=float(cfg.m) if spec.bank_update == "mu" else 0.999,
                               amp_dtype=torch.bfloat16 if cfg.dtype == "bfloat16" else None)

    x = jnp.asarray(images_np)
    epoch = jnp.int32(0)
    jbatches = [(jnp.asarray(labels_np[b]), jnp.asarray(b)) for b in batches]
    tx_img = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy()).to(dev)
    tbatches = [(torch.from_numpy(labels_np[b]).long().to(dev), torch.from_numpy(b).long().to(dev)) for b in batches]

    # rsjax: the real step, jitted with the state donated; trace + compile timed ahead of time.
    step = embed.compile_step(embed.make_step(cfg, model, tx))
    t0 = time.perf_counter()
    lowered = step.lower(state, x, *jbatches[0], epoch)
    trace_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    bank_copies = count_copies(compiled, (N_BANK, DIM))     # full copies of the bank per step
    mem = compiled.memory_analysis()
    temp_bytes = int(mem.temp_size_in_bytes) if mem is not None else None

    # First step of each from the same weights and bank: their losses should agree.
    t0 = time.perf_counter()
    state, metrics = compiled(state, x, *jbatches[0], epoch)
    loss_rsjax = float(metrics["loss"])
    first_rsjax_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss_torch = float(trainer.step(tx_img, *tbatches[0]))
    torch_sync()
    first_torch_s = time.perf_counter() - t0
    loss_rel_diff = abs(loss_rsjax - loss_torch) / max(abs(loss_torch), 1e-12)

    k = [1]

    def run_rsjax():
        nonlocal state
        t = time.perf_counter()
        for _ in range(steps_per_rep):
            state, _ = compiled(state, x, *jbatches[k[0] % len(jbatches)], epoch)
            k[0] += 1
        jax.block_until_ready(state)
        return time.perf_counter() - t

    def run_torch(threads):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        for _ in range(steps_per_rep):
            trainer.step(tx_img, *tbatches[k[0] % len(tbatches)])
            k[0] += 1
        torch_sync()                  # the loss, the update and the bank write all done
        dt = time.perf_counter() - t
        torch.set_num_threads(n_threads)
        return dt

    # Contenders: rsjax, PyTorch with every core (the reference), PyTorch with one thread (a check
    # against OpenMP oversubscription on a shared machine). A warm-up step each, then repetitions
    # in rotating order so neither always runs right after the other.
    n_threads = os.cpu_count() or 1
    runners = {"rsjax": run_rsjax, "torch": lambda: run_torch(n_threads)}
    if torch_1thread and n_threads > 1 and dev.type == "cpu":
        runners["torch_1t"] = lambda: run_torch(1)
    names = list(runners)
    for name in names[1:]:
        runners[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            settle()
            times[name].append(runners[name]())
    ips = {name: [steps_per_rep * BATCH / t for t in ts] for name, ts in times.items()}
    med = {name: _median(v) for name, v in ips.items()}
    ratios = [a / b for a, b in zip(ips["rsjax"], ips["torch"])]   # per repetition (close in time)
    best_torch = max(v for name, v in med.items() if name != "rsjax")
    out = {
        "method": method, "size": size, "dtype": dtype, "device": dev.type, "batch": BATCH, "bank_rows": N_BANK, "classes": N_CLASSES, "dim": DIM,
        "reps": reps, "steps_per_rep": steps_per_rep, "torch_threads": n_threads,
        "rsjax_img_s": med["rsjax"], "torch_img_s": med["torch"],
        "ratio": med["rsjax"] / med["torch"],
        "ratio_median_per_rep": _median(ratios),
        "torch_1t_img_s": med.get("torch_1t"),
        "ratio_vs_best_torch": med["rsjax"] / best_torch,
        "rsjax_step_s": _median(times["rsjax"]) / steps_per_rep,
        "torch_step_s": _median(times["torch"]) / steps_per_rep,
        **{f"{name}_img_s_all": v for name, v in ips.items()},
        "rsjax_trace_s": trace_s, "rsjax_compile_s": compile_s,
        "rsjax_first_step_s": first_rsjax_s, "torch_first_step_s": first_torch_s, "rsjax_init_s": init_s,
        "rsjax_bank_copies": bank_copies, "rsjax_step_temp_bytes": temp_bytes, **gpu_memory(),
        "same_init": same_init, "loss_rsjax": loss_rsjax, "loss_torch": loss_torch,
        "loss_rel_diff": loss_rel_diff,
    }
    del state, compiled, trainer
    return out


# ----------------------------------------------------------------------------- 2. bank scaling

def _loss_grad(f, labels, idx, bank, bank_labels):
    from rsjax import losses
    import jax
    return jax.value_and_grad(losses.snca_loss)(f, labels, idx, bank, bank_labels, SIGMA)


def _loss_and_write(bank, f, labels, idx, bank_labels, m):
    """Forward + backward of the SNCA loss w.r.t. ``f`` against ``bank``, then the MB write, the
    write ordered after the backward matmul (which reads the bank) by a data dependency.

    Without it (:func:`_loss_and_write_plain`, the plain composition)
    XLA:CPU's copy insertion cannot prove the in-place scatter runs after the gradient's
    ``dlogits @ bank`` and copies the whole bank twice per call, donated or not (an
    ``optimization_barrier`` does not help; ``--xla_cpu_copy_insertion_use_region_analysis=true``
    does). ``f + 0 * grad_f`` is ``f`` (the gradient is finite) but makes the written rows depend
    on the gradient, so the scatter runs last, in place.
    """
    from rsjax import bank as bank_lib
    loss, grad_f = _loss_grad(f, labels, idx, bank, bank_labels)
    bank = bank_lib.momentum_write(bank, idx, f + 0.0 * grad_f, m)
    return bank, loss, grad_f


def _loss_and_write_plain(bank, f, labels, idx, bank_labels, m):
    """As :func:`_loss_and_write` without the ordering dependency (XLA:CPU copies the bank)."""
    from rsjax import bank as bank_lib
    loss, grad_f = _loss_grad(f, labels, idx, bank, bank_labels)
    return bank_lib.momentum_write(bank, idx, f, m), loss, grad_f


def count_copies(compiled, shape) -> int:
    """How many ``copy`` instructions of an f32 array of ``shape`` a compiled executable's HLO has."""
    dims = ",".join(str(int(d)) for d in shape)
    return len(re.findall(rf"= f32\[{dims}\]\{{[0-9,]*\}} copy\(", compiled.as_text()))


def _time_calls(compiled, bank, rest, reps: int, min_rep_s: float, max_calls: int):
    """Median seconds per call of ``compiled(bank, *rest)`` (bank threaded through, donated),
    whether the first call kept the bank's buffer, the last loss and the bank."""
    import jax
    ptr = bank.unsafe_buffer_pointer()
    t0 = time.perf_counter()
    bank, loss, g = compiled(bank, *rest)
    jax.block_until_ready(bank)
    first = time.perf_counter() - t0
    same_buffer = bank.unsafe_buffer_pointer() == ptr
    calls = int(min(max_calls, max(1, math.ceil(min_rep_s / max(first, 1e-6)))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            bank, loss, g = compiled(bank, *rest)
        jax.block_until_ready((bank, loss, g))
        times.append((time.perf_counter() - t0) / calls)
    return _median(times), bool(same_buffer), float(loss), calls, bank


def snca_bank_scaling(ns=(1_000, 10_000, 100_000, 1_000_000), *, dim: int = DIM, batch: int = BATCH,
                      num_classes: int = N_CLASSES, reps: int = 5, min_rep_s: float = 0.2,
                      max_calls: int = 200, plain: bool = True, seed: int = 0) -> dict:
    """Time of one jitted SNCA loss + gradient w.r.t. ``f`` + momentum write against bank size N.

    For each N: a fresh ``N x dim`` bank (labels ``arange(N) % num_classes``), a batch of
    ``batch`` normalised features with distinct rows ``idx``; :func:`_loss_and_write` is compiled
    once per N (ahead of time, timed) with the bank donated, and timed over ``reps`` repetitions
    of enough calls to last ``min_rep_s`` (the bank threaded from call to call). With ``plain``,
    :func:`_loss_and_write_plain` (the write not ordered after the gradient) is timed too.

    Returns ``{'n', 'time_s' (median per call), 'time_per_row_ns', 'compile_s', 'calls_per_rep',
    'bank_copies' (full-bank copies in the compiled HLO; 0 = in place), 'same_buffer' (the
    returned bank is the donated buffer), 'loss', and with ``plain`` 'plain_time_s',
    'plain_bank_copies'; 'slope' (least-squares log-log fit of time against N over all N),
    'slope_largest' (between the two largest N), 'dim', 'batch', 'reps'}``.
    """
    import jax
    import jax.numpy as jnp

    from rsjax import bank as bank_lib

    fn = jax.jit(_loss_and_write, donate_argnums=(0,))
    fn_plain = jax.jit(_loss_and_write_plain, donate_argnums=(0,))
    rng = np.random.default_rng(seed)
    keys = ["n", "time_s", "time_per_row_ns", "compile_s", "calls_per_rep", "bank_copies", "same_buffer", "loss"]
    if plain:
        keys += ["plain_time_s", "plain_bank_copies"]
    res = {k: [] for k in keys}
    res.update(dim=dim, batch=batch, reps=reps)
    m = jnp.float32(0.5)
    for n in (int(v) for v in ns):
        if n < batch:
            raise ValueError(f"bank size {n} is smaller than the batch ({batch})")
        bank = bank_lib.init_bank(jax.random.key(seed), n, dim)
        bank_labels = jnp.asarray(np.arange(n) % num_classes, jnp.int32)
        idx_np = rng.choice(n, batch, replace=False).astype(np.int32)
        f = rng.normal(size=(batch, dim)).astype(np.float32)
        rest = (jnp.asarray(f / np.linalg.norm(f, axis=1, keepdims=True)),
                jnp.asarray(idx_np % num_classes, jnp.int32), jnp.asarray(idx_np), bank_labels, m)
        t0 = time.perf_counter()
        compiled = fn.lower(bank, *rest).compile()
        compile_s = time.perf_counter() - t0
        t, same, loss, calls, bank = _time_calls(compiled, bank, rest, reps, min_rep_s, max_calls)
        res["n"].append(n)
        res["time_s"].append(t)
        res["time_per_row_ns"].append(t / n * 1e9)
        res["compile_s"].append(compile_s)
        res["calls_per_rep"].append(calls)
        res["bank_copies"].append(count_copies(compiled, (n, dim)))
        res["same_buffer"].append(same)
        res["loss"].append(loss)
        del compiled
        if plain:
            compiled = fn_plain.lower(bank, *rest).compile()
            t, _, _, _, bank = _time_calls(compiled, bank, rest, reps, min_rep_s, max_calls)
            res["plain_time_s"].append(t)
            res["plain_bank_copies"].append(count_copies(compiled, (n, dim)))
            del compiled
        del bank
    if len(res["n"]) >= 2:
        ln, lt = np.log(res["n"]), np.log(res["time_s"])
        res["slope"] = float(np.polyfit(ln, lt, 1)[0])
        res["slope_largest"] = float((lt[-1] - lt[-2]) / (ln[-1] - ln[-2]))
    else:
        res["slope"] = res["slope_largest"] = float("nan")
    return res


# ----------------------------------------------------------------------------- report

def _key(rec: dict) -> str:
    """``method@size``, with ``/dtype`` for precision modes other than float32."""
    key = f"{rec['method']}@{rec['size']}"
    return key if rec["dtype"] == "float32" else f"{key}/{rec['dtype']}"


def run(quick: bool = False, sizes=None, methods=METHODS, reps=None, steps_per_rep=None, ns=None,
        torch_1thread: bool = True, dtypes=("float32",), scaling: bool = True, log_records: bool = False) -> dict:
    """Both parts; returns one dict with every figure (what ``--json`` prints). On a GPU the
    training steps are timed in each precision mode of ``dtypes`` and a repetition runs 20 steps
    by default (one step is a few milliseconds there). ``log_records``: each step's figures also
    go to stderr as a ``record {json}`` line as soon as they are measured."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    torch.backends.cudnn.benchmark = True     # fixed shapes: let cuDNN pick, as XLA autotunes
    sizes = tuple(sizes or ((64,) if quick else (64, 128)))
    ns = tuple(ns or ((1_000, 10_000, 100_000) if quick else (1_000, 10_000, 100_000, 1_000_000)))
    out = {"benchmark": "snca_step", "quick": bool(quick), "machine": machine(), "steps": []}
    t_start = time.perf_counter()
    for dtype in dtypes:
        for size in sizes:
            r = reps or (3 if quick else (5 if size <= 64 else 3))
            s = steps_per_rep or (20 if on_gpu() else 1)
            for method in methods:
                _log(f"steps: {method} {size}px {dtype}, {r} reps x {s} steps ...")
                with precision(dtype):
                    rec = bench_step(method, size, reps=r, steps_per_rep=s, torch_1thread=torch_1thread, dtype=dtype)
                _log(f"  rsjax {rec['rsjax_img_s']:.1f} img/s, PyTorch {rec['torch_img_s']:.1f} img/s "
                     f"(1 thread: {rec['torch_1t_img_s'] or float('nan'):.1f}), ratio {rec['ratio']:.2f}, "
                     f"compile {rec['rsjax_compile_s']:.1f} s, loss {rec['loss_rsjax']:.5f} / {rec['loss_torch']:.5f}")
                out["steps"].append(rec)
                if log_records:                     # kept in the log should the run be cut short
                    _log("record " + json.dumps(rec))
    if scaling:
        _log(f"bank scaling: N = {', '.join(f'{n:.0e}' for n in ns)} ...")
        with precision("float32"):
            out["scaling"] = snca_bank_scaling(ns, reps=3)
    out["ratios"] = {_key(r): r["ratio"] for r in out["steps"]}
    out["ratios_vs_best_torch"] = {_key(r): r["ratio_vs_best_torch"] for r in out["steps"]}
    out["min_ratio"] = min(out["ratios"].values()) if out["ratios"] else None
    out["slope"] = out["scaling"]["slope"] if scaling else None
    out["total_s"] = time.perf_counter() - t_start
    try:
        out["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    except OSError:
        pass
    return out


def print_report(res: dict) -> None:
    m = res["machine"]
    print(f"SNCA-CE training step, batch {BATCH}, bank {N_BANK} x {DIM}, {N_CLASSES} classes "
          f"({'quick' if res['quick'] else 'default'} run)")
    if "gpu" in m:
        print(f"GPU {m['gpu']} (PyTorch: {m['torch_gpu']}, CUDA {m['torch_cuda']}, cuDNN {m['cudnn']})")
    print(f"{m['cpu']}, {m['cpu_count']} cores; JAX {m['jax']}, PyTorch {m['torch']} "
          f"(OMP_WAIT_POLICY {m['omp_wait_policy']}); load {m['load_avg_1min_start']:.1f} -> "
          f"{m.get('load_avg_1min_end', float('nan')):.1f}")
    print()
    hdr = (f"{'method':<11} {'px':>4} {'dtype':>8} {'rsjax':>8} {'torch':>8} {'rsjax/':>7} {'torch 1t':>9} {'rsjax/':>7} "
           f"{'compile':>8} {'bank':>5}  {'first-step loss':>21}")
    sub = (f"{'':<11} {'':>4} {'':>8} {'img/s':>8} {'img/s':>8} {'torch':>7} {'img/s':>9} {'best':>7} "
           f"{'s':>8} {'cp.':>5}  {'rsjax / torch':>21}")
    print(hdr)
    print(sub)
    print("-" * len(hdr))
    for r in res["steps"]:
        t1 = r["torch_1t_img_s"]
        print(f"{r['method']:<11} {r['size']:>4} {r.get('dtype', 'float32'):>8} {r['rsjax_img_s']:>8.1f} {r['torch_img_s']:>8.1f} "
              f"{r['ratio']:>7.2f} {(t1 if t1 is not None else float('nan')):>9.1f} {r['ratio_vs_best_torch']:>7.2f} "
              f"{r['rsjax_compile_s']:>8.1f} {r['rsjax_bank_copies']:>5d}  "
              f"{r['loss_rsjax']:>10.5f} / {r['loss_torch']:<8.5f}")
    print("rsjax/torch: images/s ratio against PyTorch with every core; rsjax/best: against the faster of "
          "PyTorch's two thread counts; bank cp.: full bank copies in rsjax's compiled step")
    s = res.get("scaling")
    if s is None:
        print(f"total {res['total_s']:.0f} s")
        return
    print()
    print(f"SNCA loss + gradient w.r.t. f + momentum write (jitted, bank donated), B = {s['batch']}, D = {s['dim']}")
    plain = "plain_time_s" in s
    hdr = f"{'N':>10} {'time ms':>10} {'ns / row':>10} {'compile s':>10} {'bank cp.':>9}"
    if plain:
        hdr += f" {'unordered ms':>13} {'bank cp.':>9}"
    print(hdr)
    print("-" * len(hdr))
    for i, n in enumerate(s["n"]):
        line = (f"{n:>10d} {s['time_s'][i] * 1e3:>10.3f} {s['time_per_row_ns'][i]:>10.1f} "
                f"{s['compile_s'][i]:>10.2f} {s['bank_copies'][i]:>9d}")
        if plain:
            line += f" {s['plain_time_s'][i] * 1e3:>13.3f} {s['plain_bank_copies'][i]:>9d}"
        print(line)
    print(f"log-log slope of time against N: {s['slope']:.3f} (least squares over all N), "
          f"{s['slope_largest']:.3f} (two largest N); linear = 1, bar <= ~1.1")
    if plain:
        print("unordered: the write not ordered after the gradient (XLA:CPU then copies the bank; "
              "rsjax.train.embed.make_step orders it)")
    print(f"total {res['total_s']:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, fewer repetitions, N up to 1e5")
    p.add_argument("--sizes", type=positive_int, nargs="+", help="image sizes (default 64 128; --quick: 64)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--reps", type=positive_int, help="timed repetitions per contender (default 5 at 64 px, 3 above; --quick: 3)")
    p.add_argument("--steps-per-rep", type=positive_int, help="steps per repetition (default 1)")
    p.add_argument("--ns", type=positive_float, nargs="+", help="bank sizes of the scaling part (default 1e3 1e4 1e5 1e6)")
    p.add_argument("--no-torch-1thread", action="store_true", help="do not also time PyTorch with one thread")
    p.add_argument("--no-scaling", action="store_true", help="skip the bank-scaling part")
    p.add_argument("--no-steps", action="store_true", help="skip the training steps (the bank-scaling part alone)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=PRECISIONS,
                   help="precision modes of the training steps (GPU: float32 = no TF32, tf32, bfloat16 = mixed)")
    a = p.parse_args(argv)
    if a.no_steps and a.no_scaling:
        p.error("--no-steps and --no-scaling together leave nothing to measure")
    host_malloc = cpu_process_setup()
    res = run(quick=a.quick, sizes=a.sizes, methods=() if a.no_steps else tuple(a.methods), reps=a.reps, steps_per_rep=a.steps_per_rep,
              ns=tuple(int(n) for n in a.ns) if a.ns else None, torch_1thread=not a.no_torch_1thread,
              dtypes=tuple(a.dtypes), scaling=not a.no_scaling, log_records=a.json)
    res["host_malloc"] = host_malloc
    if a.json:
        print(json.dumps(res))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
