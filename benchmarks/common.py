"""What the benchmarks record about the machine they ran on, how the CPU ones set up their process,
and what their GPU runs share."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine() -> dict:
    """CPU model and count, the GPU (when JAX runs on one), library versions, PyTorch's thread
    count and OpenMP wait policy, the JAX backend, rsjax's convolution form
    (:func:`rsjax.models.layers.conv_form`), the 1-minute load average now
    (``load_avg_1min_start``) and the date."""
    import flax
    import jax
    import optax
    import torch

    from rsjax.models.layers import conv_form
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    gpu = {}
    if jax.default_backend() == "gpu":
        gpu = {"gpu": jax.devices()[0].device_kind, "torch_gpu": torch.cuda.get_device_name(0),
               "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), **gpu, "python": platform.python_version(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "rsjax_conv": conv_form(),
            "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)"),
            "load_avg_1min_start": load,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def cpu_process_setup() -> dict | None:
    """What the ResNet benchmarks do first, before JAX starts: glibc keeps freed step buffers
    (:func:`rsjax.hostmem.keep_freed_memory`, as ``rsjax embed`` runs). Returns what it set.

    PyTorch's OpenMP (libgomp) keeps its default wait policy (spin a while after each parallel
    region, then sleep) unless the caller sets ``OMP_WAIT_POLICY``: on the 2-core Xeon,
    2026-11-27, the SNCA-CE(MB) step at 64 px ran at 213 img/s with the default against 190 with
    ``PASSIVE``, which these benchmarks used to set (and ``ACTIVE``, spinning without end, starved
    rsjax's threads when the two were interleaved: 114 against 186-196 img/s). :func:`settle`
    keeps the default's spinning out of the next contender's time."""
    from rsjax.hostmem import keep_freed_memory
    return keep_freed_memory()


SETTLE_S = 0.1   # longer than libgomp's default spin (300 000 pauses) and Eigen's pool spin


def settle() -> None:
    """An untimed pause between timed contenders on a CPU, so the worker threads of the one that
    just ran (PyTorch's OpenMP spins after its last parallel region, XLA's pool briefly too) are
    idle before the next one starts. Nothing on a GPU."""
    if not on_gpu():
        time.sleep(SETTLE_S)


# ----------------------------------------------------------------------------- GPU runs

PRECISIONS = ("float32", "tf32", "bfloat16")


def model_dtype(mode: str) -> str:
    """The ``dtype`` setting of rsjax's models in a precision mode: ``bfloat16`` in ``bfloat16``,
    ``float32`` in ``float32`` and ``tf32`` (TF32 is a way of multiplying float32 arrays)."""
    return "bfloat16" if mode == "bfloat16" else "float32"


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU (then PyTorch runs on CUDA too)."""
    import jax
    return jax.default_backend() == "gpu"


def torch_device():
    import torch
    return torch.device("cuda" if on_gpu() else "cpu")


def torch_sync() -> None:
    """Wait for PyTorch's queued GPU work (a no-op on CPU): eager CUDA calls return before they run."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def precision(mode: str):
    """The same arithmetic in both frameworks for one precision mode of a GPU run.

    ``float32``: float32 products everywhere (JAX ``highest``; PyTorch's TF32 off for matmuls and
    cuDNN convolutions, whose default lets cuDNN use TF32). ``tf32``: float32 storage, TF32
    tensor-core products in both. ``bfloat16``: mixed precision (rsjax ``dtype=bfloat16``,
    ``torch.autocast(bfloat16)``); what stays float32 (the SNCA loss against the bank, BatchNorm
    statistics) runs as in ``float32``. JAX reads its setting when a step is traced, so the
    context must be open around lowering. On CPU both frameworks compute float32 products anyway
    and nothing is changed."""
    if mode not in PRECISIONS:
        raise ValueError(f"precision {mode!r}: use one of {', '.join(PRECISIONS)}")
    if not on_gpu():
        yield
        return
    import jax
    import torch
    tf32 = mode == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with jax.default_matmul_precision("tensorfloat32" if tf32 else "highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gpu_memory() -> dict:
    """Peak device memory so far: XLA's allocator (``peak_bytes_in_use``) and PyTorch's caching
    allocator (``max_memory_allocated``); empty on CPU."""
    if not on_gpu():
        return {}
    import jax
    import torch
    stats = jax.devices()[0].memory_stats() or {}
    return {"jax_peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
            "torch_peak_bytes": int(torch.cuda.max_memory_allocated())}
