"""Where rsjax's ResNet18 step gains and loses against PyTorch: block by block, convolution by convolution.

    python -m benchmarks.resnet_probe            # 64 px images, batch 64 (the SNCA-CE bar's step)
    python -m benchmarks.resnet_probe --size 128
    python -m benchmarks.resnet_probe --json

**Blocks.** The network is cut into the stem (7 x 7 convolution, BatchNorm, ReLU, max-pool) and
its eight basic blocks. For each, rsjax's forward (a jitted ``jax.vjp`` of the block, training-mode
BatchNorm) and backward (the jitted VJP of a cotangent) are timed, and PyTorch's forward and
forward + backward of the same block (``benchmarks/torch_resnet.py``; backward = the difference).
Then the forward + backward of the whole backbone and heads (cross-entropy plus one embedding
coordinate as the loss, no optimiser, no bank): rsjax as one jitted gradient and as the chain of
per-block calls, PyTorch eager. The block sums show where the whole step's ratio comes from.

**Convolutions.** For each stride-1 3 x 3 convolution shape (layer1 ... layer4: size/4 ... size/32
pixels a side, 64 ... 512 channels), one jitted call of the forward and all gradients, with the
input made as in the network (``relu(x * scale + shift)``, which XLA fuses into the convolution's
input), differentiated with respect to x, the kernel and the scale:

- ``rsjax``: :class:`rsjax.models.resnet.Conv`'s im2col GEMM, what the CPU step runs;
- ``winograd``: :func:`winograd_conv`, Winograd's F(2 x 2, 3 x 3) minimal filtering (Lavin and
  Gray, 2016): 16 GEMMs with 2.25x fewer multiplications than im2col, plus input and output
  transforms, its gradient in the same transformed domain;
- ``xla``: ``lax.conv_general_dilated``;
- ``torch``: ``torch.nn.functional.conv2d`` + ``backward`` (oneDNN on a CPU).

Repetitions interleaved, medians reported. The Winograd form is a measured candidate, not used by
rsjax: in the step it made layer1's forward faster and its backward slower
(``benchmarks/README.md``, 2026-11-27).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import cpu_process_setup, machine, settle
from rsjax.cli import positive_int

# F(2 x 2, 3 x 3): Y = A^T [(G w G^T) * (B^T d B)] A over 4 x 4 input tiles with stride 2
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def _bt(e0, e1, e2, e3):
    """B^T along the tile's tap axis: four input taps -> four transformed values."""
    return [e0 - e2, e1 + e2, e2 - e1, e1 - e3]


def _bt_adjoint(t0, t1, t2, t3):
    return [t0, t1 - t2 + t3, t1 + t2 - t0, -t3]


def _at(m0, m1, m2, m3):
    """A^T: four transformed values -> the tile's two outputs."""
    return [m0 + m1 + m2, m1 - m2 - m3]


def _at_adjoint(y0, y1):
    return [y0, y0 + y1, y0 - y1, -y1]


def _input_transform(x):
    """NHWC ``x`` (H, W even) -> V (16, B * H/2 * W/2, C): B^T d B of every 4 x 4 tile of the
    zero-padded input, the tiles' rows and columns taken as plain slices of the even and odd
    rows (a free reshape), not as strided slices."""
    b, hh, ww, c = x.shape
    h, w = hh // 2, ww // 2
    rows = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h + 1, 2, ww + 2, c)
    v = []
    for t in _bt(rows[:, :h, 0], rows[:, :h, 1], rows[:, 1:, 0], rows[:, 1:, 1]):
        cols = t.reshape(b, h, w + 1, 2, c)
        v += _bt(cols[:, :, :w, 0], cols[:, :, :w, 1], cols[:, :, 1:, 0], cols[:, :, 1:, 1])
    return jnp.stack(v).reshape(16, b * h * w, c)


def _input_transform_adjoint(dv, shape):
    """The transpose of :func:`_input_transform`: (16, tiles, C) -> the NHWC input's gradient."""
    b, hh, ww, c = shape
    h, w = hh // 2, ww // 2
    dv = dv.reshape(4, 4, b, h, w, c)

    def overlap_add(taps, axis):
        """Tap k of tile j sits at padded position 2 j + k: even (k = 0, 2) and odd (k = 1, 3)
        positions of blocks j and j + 1, interleaved along ``axis``."""
        pad = [(0, 0)] * taps[0].ndim
        after, before = list(pad), list(pad)
        after[axis], before[axis] = (0, 1), (1, 0)
        even = jnp.pad(taps[0], after) + jnp.pad(taps[2], before)
        odd = jnp.pad(taps[1], after) + jnp.pad(taps[3], before)
        both = jnp.stack([even, odd], axis + 1)
        return both.reshape(both.shape[:axis] + (-1,) + both.shape[axis + 2:])

    rows = [overlap_add(_bt_adjoint(*[dv[a, k] for k in range(4)]), 2) for a in range(4)]
    dxp = overlap_add(_bt_adjoint(*rows), 1)
    return dxp[:, 1:hh + 1, 1:ww + 1]


def _output_transform(m, shape):
    """M (16, tiles, Cout) -> NHWC output: A^T m A per tile, the 2 x 2 outputs interleaved."""
    b, hh, ww, co = shape
    m = m.reshape(4, 4, b, hh // 2, ww // 2, co)
    y = [_at(*[r[k] for k in range(4)]) for r in _at(*[m[a] for a in range(4)])]
    return jnp.stack([jnp.stack(y[p], 3) for p in range(2)], 2).reshape(shape)


def _output_transform_adjoint(dy):
    b, hh, ww, co = dy.shape
    d = dy.reshape(b, hh // 2, 2, ww // 2, 2, co)
    dm = []
    for r in _at_adjoint(d[:, :, 0], d[:, :, 1]):
        dm += _at_adjoint(r[:, :, :, 0], r[:, :, :, 1])
    return jnp.stack(dm).reshape(16, -1, co)


@jax.custom_vjp
def winograd_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3 x 3, stride-1, zero-padded 'SAME' convolution (NHWC, HWIO) of an even-sized input by
    Winograd's F(2 x 2, 3 x 3), with its gradient computed in the same transformed domain."""
    return _winograd_fwd(x, kernel)[0]


def _winograd_fwd(x, kernel):
    if x.shape[1] % 2 or x.shape[2] % 2 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"winograd_conv takes a 3 x 3 kernel and an even height and width; got input "
                         f"{x.shape} and kernel {kernel.shape}: use conv_im2col for other shapes")
    cin, cout = kernel.shape[2:]
    v = _input_transform(x)
    u = jnp.einsum("ai,ijcd,bj->abcd", _G, kernel, _G).reshape(16, cin, cout)
    m = jnp.einsum("ptc,pcd->ptd", v, u)
    return _output_transform(m, x.shape[:3] + (cout,)), (v, u, x.shape)


def _winograd_bwd(res, dy):
    v, u, shape = res
    dm = _output_transform_adjoint(dy)
    dv = jnp.einsum("ptd,pcd->ptc", dm, u)
    du = jnp.einsum("ptd,ptc->pcd", dm, v).reshape(4, 4, *u.shape[1:])
    return _input_transform_adjoint(dv, shape), jnp.einsum("ai,abcd,bj->ijcd", _G, du, _G)


winograd_conv.defvjp(_winograd_fwd, _winograd_bwd)


def conv_shapes(size: int) -> list[tuple[str, int, int]]:
    """(layer, side, channels) of ResNet18's stride-1 3 x 3 convolutions for ``size`` px images."""
    return [(f"layer{i + 1}", size // 2 ** (i + 2), 64 * 2 ** i) for i in range(4) if size // 2 ** (i + 2) >= 2]


def _median_times(fns: dict, reps: int) -> dict:
    """{name: median seconds of fn()} over ``reps`` rounds, the contenders interleaved in each."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            settle()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def _rsjax_blocks(size: int, batch: int):
    """rsjax's ResNet18 cut into [(name, apply(params, h) -> h)] with its parameters, BatchNorm in
    training mode, plus the head loss and the whole network's loss."""
    import flax.linen as nn

    from rsjax.models.resnet import BasicBlock, Conv, ResNet18, _pad, conv_kernel_init, max_pool

    model = ResNet18(dim=128, num_classes=21)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32))
    labels = jnp.arange(batch) % 21
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
    params, stats = variables["params"], variables["batch_stats"]
    conv = partial(Conv, use_bias=False, kernel_init=conv_kernel_init)
    norm = partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5)

    def stem(p, h):
        h = conv(64, (7, 7), (2, 2), padding=_pad(7)).apply({"params": p["conv1"]}, h)
        h, _ = norm().apply({"params": p["bn1"], "batch_stats": stats["bn1"]}, h, mutable=["batch_stats"])
        return max_pool(nn.relu(h), 3, 2, 1)

    def block(name, filters, strides):
        module = BasicBlock(filters, conv=conv, norm=norm, strides=strides)
        return lambda p, h: module.apply({"params": p[name], "batch_stats": stats[name]}, h, mutable=["batch_stats"])[0]

    blocks = [("stem", stem)] + [(f"layer{i + 1}_{j}", block(f"layer{i + 1}_{j}", 64 * 2 ** i, 2 if i and not j else 1))
                                  for i in range(4) for j in range(2)]

    def head_loss(p, h):
        v = jnp.mean(h, axis=(1, 2)) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
        logits = v @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        return _loss(logits, v / jnp.linalg.norm(v, axis=-1, keepdims=True), labels)

    def whole_loss(p, x):
        out, _ = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        return _loss(out["logits"], out["embedding"], labels)
    return blocks, params, x, head_loss, whole_loss


def _loss(logits, embedding, labels):
    """Cross-entropy plus the first embedding coordinate: a loss that reaches both heads."""
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels]) + jnp.sum(embedding[:, 0])


def probe_blocks(size: int = 64, batch: int = 64, reps: int = 9) -> dict:
    """Forward and backward seconds per block, rsjax against PyTorch, and the whole network's."""
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_resnet import TorchResNet18Cls

    blocks, params, x, head_loss, whole_loss = _rsjax_blocks(size, batch)
    # the stem's input is the images: its VJP is taken with respect to the parameters only, as in a step
    forward = {name: jax.jit((lambda p, h, f=f: jax.vjp(lambda p: f(p, h), p)) if name == "stem"
                             else (lambda p, h, f=f: jax.vjp(f, p, h))) for name, f in blocks}
    backward = jax.jit(lambda vjp, g: vjp(g))
    head_grad = jax.jit(jax.grad(head_loss, argnums=(0, 1)))

    def chained(params, x):
        h, vjps = x, []
        for name, _ in blocks:
            h, vjp = forward[name](params, h)
            vjps.append(vjp)
        _, g = head_grad(params, h)
        for vjp in reversed(vjps):
            g = backward(vjp, g)[-1]
        return g

    torch.manual_seed(0)
    tmodel = TorchResNet18Cls()
    tblocks = [("stem", lambda h: tmodel.maxpool(F.relu(tmodel.bn1(tmodel.conv1(h)))))]
    tblocks += [(f"layer{i + 1}_{j}", getattr(tmodel, f"layer{i + 1}")[j]) for i in range(4) for j in range(2)]
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    labels_t = torch.arange(batch) % 21

    def torch_whole():
        f, logits = tmodel(xt)
        (F.cross_entropy(logits, labels_t) + f[:, 0].sum()).backward()
        tmodel.zero_grad(set_to_none=True)

    rows, h, ht = [], x, xt
    for (name, _), (_, tblock) in zip(blocks, tblocks):
        h_in, ht_in = h, ht.detach().requires_grad_(name != "stem")
        h, vjp = forward[name](params, h_in)
        g = jnp.full(h.shape, 0.01, h.dtype)

        def torch_fb(tblock=tblock, ht_in=ht_in):
            out = tblock(ht_in)
            out.backward(torch.full_like(out, 0.01))
            tmodel.zero_grad(set_to_none=True)
            ht_in.grad = None
        t = _median_times({"rsjax_forward": lambda: jax.block_until_ready(forward[name](params, h_in)),
                           "rsjax_backward": lambda: jax.block_until_ready(backward(vjp, g)),
                           "torch_forward": lambda: tblock(ht_in), "torch_forward_backward": torch_fb}, reps)
        with torch.no_grad():
            ht = tblock(ht_in)
        rows.append({"block": name, "out_shape": list(h.shape), "rsjax_forward_s": t["rsjax_forward"],
                     "rsjax_backward_s": t["rsjax_backward"], "torch_forward_s": t["torch_forward"],
                     "torch_backward_s": t["torch_forward_backward"] - t["torch_forward"]})
    whole = jax.jit(jax.grad(whole_loss))
    ref, got = whole(params, x)["conv1"]["kernel"], chained(params, x)["conv1"]["kernel"]
    stem_diff = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))   # the chain computes the same gradient
    t = _median_times({"rsjax_one_jit": lambda: jax.block_until_ready(whole(params, x)),
                       "rsjax_chained_blocks": lambda: jax.block_until_ready(chained(params, x)),
                       "torch": torch_whole}, reps)
    return {"blocks": rows, "whole_forward_backward_s": t, "chained_stem_grad_rel_diff": stem_diff}


def probe_convs(size: int = 64, batch: int = 64, reps: int = 9) -> list[dict]:
    """Forward + all gradients of each stride-1 3 x 3 convolution shape, four ways."""
    import torch
    import torch.nn.functional as F

    from rsjax.models.resnet import conv_im2col

    forms = {"rsjax": lambda x, k: conv_im2col(x, k, (1, 1), ((1, 1), (1, 1))),
             "winograd": winograd_conv,
             "xla": lambda x, k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))}
    rng = np.random.default_rng(0)
    rows = []
    for layer, side, c in conv_shapes(size):
        x = rng.standard_normal((batch, side, side, c), dtype=np.float32)
        kern = (rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32)
        dy = rng.standard_normal((batch, side, side, c), dtype=np.float32)
        scale = np.ones(c, np.float32)
        args = [jnp.asarray(a) for a in (x, kern, scale, dy)]
        jitted = {name: jax.jit(jax.grad(lambda x, k, s, dy, conv=conv: jnp.vdot(conv(jax.nn.relu(x * s + 0.1), k), dy),
                                         argnums=(0, 1, 2)))
                  for name, conv in forms.items()}
        fns = {name: (lambda f=f: jax.block_until_ready(f(*args))) for name, f in jitted.items()}
        xt, kt, st = (torch.from_numpy(a).requires_grad_(True) for a in
                      (x.transpose(0, 3, 1, 2).copy(), kern.transpose(3, 2, 0, 1).copy(), scale.reshape(1, c, 1, 1).copy()))
        dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())

        def torch_fb():
            F.conv2d(torch.relu(xt * st + 0.1), kt, padding=1).backward(dyt)
            for t in (xt, kt, st):
                t.grad = None
        fns["torch"] = torch_fb
        times = _median_times(fns, reps)
        ref = jitted["xla"](*args)
        diff = {name: max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(jitted[name](*args), ref))
                for name in ("rsjax", "winograd")}
        rows.append({"layer": layer, "side": side, "channels": c, "batch": batch,
                     "gflop": 3 * 2 * batch * side * side * 9 * c * c / 1e9,
                     **{f"{k}_s": v for k, v in times.items()},
                     "winograd_over_rsjax": times["winograd"] / times["rsjax"],
                     "rsjax_over_torch": times["rsjax"] / times["torch"],
                     "max_rel_grad_diff_vs_xla": diff})
    return rows


def _print_report(res: dict) -> None:
    ms = lambda s: f"{1e3 * s:8.2f}"
    b = res["blocks"]
    print(f"ResNet18 at {res['size']} px, batch {res['batch']}, ms (median of {res['reps']}, interleaved)")
    print(f"{'block':<9} {'rsjax fwd':>9} {'bwd':>8} {'sum':>8} {'torch fwd':>9} {'bwd':>8} {'sum':>8} {'rsjax/torch':>11}")
    tot = np.zeros(4)
    for r in b["blocks"]:
        v = np.array([r["rsjax_forward_s"], r["rsjax_backward_s"], r["torch_forward_s"], r["torch_backward_s"]])
        tot += v
        print(f"{r['block']:<9} {ms(v[0]):>9} {ms(v[1])} {ms(v[0] + v[1])} {ms(v[2]):>9} {ms(v[3])} {ms(v[2] + v[3])} "
              f"{(v[0] + v[1]) / (v[2] + v[3]):>11.2f}")
    print(f"{'sum':<9} {ms(tot[0]):>9} {ms(tot[1])} {ms(tot[0] + tot[1])} {ms(tot[2]):>9} {ms(tot[3])} "
          f"{ms(tot[2] + tot[3])} {(tot[0] + tot[1]) / (tot[2] + tot[3]):>11.2f}")
    w = b["whole_forward_backward_s"]
    print(f"whole network forward + backward: rsjax one jit {ms(w['rsjax_one_jit'])}, rsjax chained blocks "
          f"{ms(w['rsjax_chained_blocks'])}, PyTorch {ms(w['torch'])}; rsjax (one jit) / PyTorch "
          f"{w['rsjax_one_jit'] / w['torch']:.2f}")
    print("\nstride-1 3x3 convolutions: forward + all gradients, ms")
    print(f"{'layer':<7} {'side':>4} {'C':>4} {'GFLOP':>6} {'rsjax':>8} {'winograd':>8} {'xla':>8} {'torch':>8} "
          f"{'wino/rsjax':>10} {'rsjax/torch':>11}")
    for r in res["convs"]:
        print(f"{r['layer']:<7} {r['side']:>4} {r['channels']:>4} {r['gflop']:>6.2f} {ms(r['rsjax_s'])} "
              f"{ms(r['winograd_s'])} {ms(r['xla_s'])} {ms(r['torch_s'])} {r['winograd_over_rsjax']:>10.2f} "
              f"{r['rsjax_over_torch']:>11.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels (64: the SNCA-CE bar's step)")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--reps", type=positive_int, default=9)
    a = p.parse_args(argv)
    host_malloc = cpu_process_setup()
    res = {"benchmark": "resnet_probe", "machine": machine(), "host_malloc": host_malloc, "size": a.size,
           "batch": a.batch, "reps": a.reps, "blocks": probe_blocks(a.size, a.batch, a.reps),
           "convs": probe_convs(a.size, a.batch, a.reps)}
    if a.json:
        print(json.dumps(res))
    else:
        _print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
