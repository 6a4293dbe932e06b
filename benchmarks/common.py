"""What the benchmarks record about the machine they ran on."""
from __future__ import annotations

import datetime
import os
import platform


def machine() -> dict:
    """CPU model and count, library versions, PyTorch's thread count and OpenMP wait policy, the
    JAX backend, the 1-minute load average now (``load_avg_1min_start``) and the date."""
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
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp spins)"),
            "load_avg_1min_start": load,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
