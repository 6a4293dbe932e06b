"""What the benchmarks record about the machine they ran on, how the CPU ones set up their process,
and what their GPU runs share."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys


def machine() -> dict:
    """CPU model and count, the GPU (when JAX runs on one), library versions, PyTorch's thread
    count and OpenMP wait policy, the JAX backend, the 1-minute load average now
    (``load_avg_1min_start``) and the date."""
    import flax
    import jax
    import optax
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    gpu = {}
    if jax.default_backend() == "gpu":
        gpu = {"gpu": jax.devices()[0].device_kind, "torch_gpu": torch.cuda.get_device_name(0),
               "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return {"cpu": cpu, "cpu_count": os.cpu_count(), **gpu, "python": platform.python_version(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp spins)"),
            "load_avg_1min_start": load,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def cpu_process_setup() -> dict | None:
    """What the ResNet benchmarks do first, before JAX or PyTorch start: PyTorch's OpenMP (libgomp)
    waits passively unless the caller set ``OMP_WAIT_POLICY`` (its default spinning makes PyTorch
    several times slower when other processes share the cores; read when torch loads), and glibc
    keeps freed step buffers (:func:`rsjax.hostmem.keep_freed_memory`, as ``rsjax embed`` runs).
    Returns what ``keep_freed_memory`` set."""
    from rsjax.hostmem import keep_freed_memory
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return keep_freed_memory()


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
