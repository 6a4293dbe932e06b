"""Keep the host memory of XLA:CPU's step buffers for reuse (glibc ``malloc`` settings).

XLA:CPU allocates the temporaries of one compiled call as one block (about 460 MB for a batch-64
SNCA-CE step at 64 px, 240 MB for an MS2A-Net iteration on a 166 x 600 scene). glibc's ``malloc``
serves every block over 32 MB with ``mmap`` and returns it to the kernel on ``free``, and XLA's
worker threads allocate from per-thread arenas that fall back to ``mmap`` for large blocks even
when ``mmap`` is switched off. So every training step faults its whole temporary block back in,
page by page: 114 000 page faults per SNCA-CE step, measured at 0.53 s per step against 0.46 s
without them (a 2-core Xeon, 2026-11-26; ``benchmarks/README.md``).

:func:`keep_freed_memory` tells glibc to serve all threads from the main heap (one arena), never
to use ``mmap`` and never to trim the heap (``M_TRIM_THRESHOLD`` -1, which mallopt(3) documents as
"disables trimming completely"), so a freed step buffer is reused by the next step. It must run
before JAX starts its CPU backend (the worker threads pick their arena at their first
allocation). Memory the process has used stays reserved for it until it exits.

Until 2026-11-27 the threshold was the largest ``int``, 2 GB of free heap top: enough at 64 px,
but a 128 px step's temporaries (1.8 GB) plus the heap's free top passed it, glibc gave them back
after each step and the next one faulted them in again (225 000-338 000 page faults and 2.0-2.4 s
per step, against 0 faults and 1.37 s with trimming off, steps dispatched back to back;
``benchmarks/README.md``).

It is a trade: with one arena XLA's multi-threaded compiler contends for the heap lock (the
SNCA-CE step compiles in 8.5 s instead of 5.2 s), and small steps gain nothing (MS2A-Net on
Salinas-A: 42 instead of 39 ms per iteration, its temporaries are 54 MB). So it is applied where
large step buffers repeat thousands of times: ``rsjax embed``, ``experiments/table_snca.py`` and
``benchmarks/snca_step.py`` call it first thing; ``rsjax cluster`` does not.
``RSJAX_MALLOC=system`` leaves glibc's defaults alone. Elsewhere than Linux with glibc this does
nothing; an allocator preloaded with ``LD_PRELOAD`` (tcmalloc, jemalloc) is left alone as well.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = -1                 # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

_applied: dict | None = None


def keep_freed_memory(warn_if_late: bool = True) -> dict | None:
    """Apply the glibc settings above once per process; returns what was set, or None when
    nothing was (not glibc, opted out, another allocator preloaded, or JAX already started: then
    a RuntimeWarning says so unless ``warn_if_late`` is False)."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("RSJAX_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return None
    if "malloc" in os.environ.get("LD_PRELOAD", ""):      # libtcmalloc*.so, libjemalloc.so: theirs
        return None
    if "jax" in sys.modules:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            if warn_if_late:
                warnings.warn("rsjax.hostmem.keep_freed_memory() called after JAX started its backend: its "
                              "threads keep glibc's per-thread arenas, so step buffers are still returned to the "
                              "kernel and faulted back in every step. Call it before the first JAX operation.",
                              RuntimeWarning, stacklevel=2)
            return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version      # glibc only (musl has no mallopt arenas)
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    settings = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
                "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, _NEVER_TRIM)}
    ok = {name: bool(mallopt(param, value)) for name, (param, value) in settings.items()}
    _applied = {"glibc": gnu_get_libc_version().decode(), **{k: v[1] for k, v in settings.items()},
                "accepted": ok}
    return _applied
