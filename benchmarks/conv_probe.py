"""Where MS2A-Net's iteration spends its time, one convolution at a time: rsjax (XLA) vs PyTorch.

    python -m benchmarks.conv_probe                 # Trento's shape, float32 (no TF32) and bfloat16
    python -m benchmarks.conv_probe --json

For each convolution of the network at Trento's shape (166 x 600 x 63): the three dilated 5 x 5
convolutions 63 -> 12 and the spectral 3 x 3 one 63 -> 3 (forward and kernel gradient: the
scene needs none) and the decoder's 3 x 3 convolution 6 -> 63 (forward, kernel and input
gradient), timed as one jitted ``value_and_grad`` in JAX, with the input in rsjax's CNHW layout
(:func:`rsjax.models.layers.conv_same_multi`, which follows ``RSJAX_CONV``) and in NHWC with
``lax.conv_general_dilated``, against ``torch.nn.functional.conv2d`` + ``backward`` (NCHW,
``cudnn.benchmark``). Median of ``--reps`` timings of ``--inner`` calls each, synchronised.
Meant for the GPU, where rsjax uses XLA's convolutions; runs on CPU too.

A third JAX column times :func:`rsjax.models.layers.polyphase_conv_cnhw` (``RSJAX_CONV=polyphase``):
a dilated convolution computed as an undilated one over the d x d polyphase sub-images moved into
the batch (what TensorFlow's ``atrous_conv2d`` does with ``space_to_batch``), exact. On an H200
(2026-11-27) it brought XLA's dilated convolutions from 4.4 ms (float32) to the undilated 0.7-0.9
ms at this shape, and rsjax adopted it as its default off the CPU (``benchmarks/README.md``). The
CNHW column follows ``RSJAX_CONV``, so set ``RSJAX_CONV=xla`` to time XLA's dilated convolution.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.common import PRECISIONS, machine, model_dtype, precision, torch_device, torch_sync
from rsjax.cli import positive_int

# (name, kernel size, cin, cout, dilation, input gradient needed)
CONVS = [("spatial_l1", 5, 63, 12, 1, False), ("spatial_l2", 5, 63, 12, 2, False),
         ("spatial_l4", 5, 63, 12, 4, False), ("spectral", 3, 63, 3, 1, False), ("dec_conv", 3, 6, 63, 1, True)]


def _median_time(fn, sync, reps: int, inner: int) -> float:
    """Median over ``reps`` of the time per call of ``inner`` calls of ``fn`` queued back to back,
    ``sync(last result)`` after them."""
    sync(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            out = fn()
        sync(out)
        times.append((time.perf_counter() - t) / inner)
    return float(np.median(times))


def probe(h: int, w: int, dtype: str, reps: int, inner: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F
    from jax import lax

    from rsjax.models.layers import compute_dtype, conv_same_multi, polyphase_conv_cnhw

    jdt = compute_dtype(model_dtype(dtype))
    tdt = getattr(torch, model_dtype(dtype))
    dev = torch_device()
    rng = np.random.default_rng(0)
    rows = []
    for name, k, cin, cout, dil, need_dx in CONVS:
        x = rng.random((1, h, w, cin), dtype=np.float32)
        kern = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
        probe_np = rng.standard_normal((1, h, w, cout)).astype(np.float32)
        argnums = (0, 1) if need_dx else (1,)

        x_cnhw = jnp.asarray(x.transpose(3, 0, 1, 2), jdt)
        p_cnhw = jnp.asarray(probe_np.transpose(3, 0, 1, 2), jdt)
        f_cnhw = jax.jit(jax.value_and_grad(
            lambda xx, kk: jnp.vdot(conv_same_multi(xx, (kk,), (dil,))[0], p_cnhw).astype(jnp.float32),
            argnums=argnums))
        x_nhwc, p_nhwc = jnp.asarray(x, jdt), jnp.asarray(probe_np, jdt)
        f_nhwc = jax.jit(jax.value_and_grad(
            lambda xx, kk: jnp.vdot(lax.conv_general_dilated(xx, kk, (1, 1), "SAME", rhs_dilation=(dil, dil),
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")),
                                    p_nhwc).astype(jnp.float32), argnums=argnums))
        f_poly = jax.jit(jax.value_and_grad(
            lambda xx, kk: jnp.vdot(polyphase_conv_cnhw(xx, kk, dil), p_cnhw).astype(jnp.float32), argnums=argnums))
        kj = jnp.asarray(kern, jdt)
        t_cnhw = _median_time(lambda: f_cnhw(x_cnhw, kj), jax.block_until_ready, reps, inner)
        t_nhwc = _median_time(lambda: f_nhwc(x_nhwc, kj), jax.block_until_ready, reps, inner)
        t_poly = _median_time(lambda: f_poly(x_cnhw, kj), jax.block_until_ready, reps, inner)

        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev, tdt).requires_grad_(need_dx)
        kt = torch.from_numpy(kern.transpose(3, 2, 0, 1).copy()).to(dev, tdt).requires_grad_(True)
        pt = torch.from_numpy(probe_np.transpose(0, 3, 1, 2).copy()).to(dev, tdt)

        def torch_fb():
            y = F.conv2d(xt, kt, padding=dil * (k // 2), dilation=dil)
            (y * pt).float().sum().backward()
            kt.grad = None
            xt.grad = None
        t_torch = _median_time(torch_fb, lambda _: torch_sync(), reps, inner)
        flops = 2.0 * h * w * k * k * cin * cout * (3 if need_dx else 2)
        rows.append({"conv": name, "k": k, "cin": cin, "cout": cout, "dilation": dil, "input_grad": need_dx,
                     "dtype": dtype, "rsjax_cnhw_s": t_cnhw, "xla_nhwc_s": t_nhwc, "polyphase_cnhw_s": t_poly, "torch_s": t_torch,
                     "flops": flops})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--shape", type=positive_int, nargs=2, default=(166, 600), metavar=("H", "W"))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=PRECISIONS)
    p.add_argument("--reps", type=positive_int, default=5)
    p.add_argument("--inner", type=positive_int, default=10)
    a = p.parse_args(argv)
    import torch
    torch.backends.cudnn.benchmark = True
    res = {"benchmark": "conv_probe", "machine": machine(), "shape": list(a.shape), "rows": []}
    for dtype in a.dtypes:
        with precision(dtype):
            res["rows"] += probe(*a.shape, dtype, a.reps, a.inner)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{'conv':<11} {'dtype':>8} {'rsjax CNHW ms':>14} {'XLA NHWC ms':>12} {'polyphase ms':>13} "
          f"{'PyTorch ms':>11} {'rsjax/torch':>12}")
    for r in res["rows"]:
        print(f"{r['conv']:<11} {r['dtype']:>8} {1e3 * r['rsjax_cnhw_s']:>14.3f} {1e3 * r['xla_nhwc_s']:>12.3f} "
              f"{1e3 * r['polyphase_cnhw_s']:>13.3f} {1e3 * r['torch_s']:>11.3f} {r['rsjax_cnhw_s'] / r['torch_s']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
