"""rsjax.hostmem.keep_freed_memory: step buffers are reused instead of faulted in every call."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or "malloc" in os.environ.get("LD_PRELOAD", ""),
                                reason="glibc malloc settings: Linux without a preloaded allocator only")

# A jitted call with ~64 MB of temporaries (one block, over glibc's 32 MB mmap limit), called
# repeatedly; prints the median minor page faults of a call and what keep_freed_memory() applied.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    from rsjax.hostmem import keep_freed_memory
    applied = keep_freed_memory()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a, b, c: (a @ b) @ c)       # a @ b: the (8192, 2048) temporary
    a, b, c = jnp.ones((8192, 64)) / 64, jnp.ones((64, 2048)), jnp.ones((2048, 8))
    assert f.lower(a, b, c).compile().memory_analysis().temp_size_in_bytes >= 8192 * 2048 * 4
    for _ in range(3):
        f(a, b, c).block_until_ready()
    faults = []
    for _ in range(15):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(a, b, c).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults_per_call": sorted(faults)[len(faults) // 2]}))
""")


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_buffers_are_reused_not_faulted_in_again():
    pages = 8192 * 2048 * 4 // 4096            # the (8192, 2048) float32 temporary, in 4 KB pages
    tuned = _probe(RSJAX_MALLOC="")
    system = _probe(RSJAX_MALLOC="system")
    assert system["applied"] is None
    if tuned["applied"] is None:
        pytest.skip("not glibc: keep_freed_memory() does nothing here")
    assert all(tuned["applied"]["accepted"].values()), tuned
    # glibc's defaults return the block to the kernel after each call: (nearly) every page faults again
    # (in 4 KB pages; with transparent huge pages always on, the kernel faults 2 MB at a time)
    try:
        thp_always = "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        thp_always = False
    if thp_always:
        pytest.skip("transparent huge pages are always on here: faults come 2 MB at a time, not per 4 KB page")
    assert system["faults_per_call"] > 0.5 * pages, system
    assert tuned["faults_per_call"] < 0.05 * pages, tuned


def test_too_late_once_jax_has_started_warns():
    code = textwrap.dedent("""
        import warnings, jax.numpy as jnp
        jnp.ones(3).block_until_ready()
        from rsjax.hostmem import keep_freed_memory
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(keep_freed_memory(), any("before the first JAX operation" in str(x.message) for x in w))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "RSJAX_MALLOC": ""}, check=True)
    assert out.stdout.split()[-2:] == ["None", "True"], out.stdout + out.stderr


# A freed block larger than 2 GB (a 128 px SNCA-CE step's temporaries are 1.8 GB, plus the heap's
# free top) must come back without page faults: with a finite trim threshold glibc returns the
# heap top to the kernel once it passes the threshold, and every page faults in again.
_BIG_BLOCK = textwrap.dedent("""
    import ctypes, ctypes.util, json, resource
    from rsjax.hostmem import keep_freed_memory
    applied = keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = 2304 << 20                                   # 2.25 GB
    faults = []
    for _ in range(2):
        p = libc.malloc(n)
        assert p, "malloc failed"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(p, 1, n)                        # touch every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(p)
    print(json.dumps({"applied": applied, "faults": faults}))
""")


def test_a_freed_block_over_2_gb_is_reused_without_faults():
    pages = (2304 << 20) // 4096
    out = subprocess.run([sys.executable, "-c", _BIG_BLOCK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RSJAX_MALLOC": ""}, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["applied"] is None:
        pytest.skip("not glibc: keep_freed_memory() does nothing here")
    first, second = res["faults"]
    assert first > 0.5 * pages, res                  # the first touch faults the block in
    assert second < 0.01 * pages, res                # the second reuses it: trimming is off
