"""The diagnostic behind bank_copies.log (run on an H200, 2026-11-27, as diag/bank_copies.py from the
repository root by run_diag.sh): full-bank copies in the compiled SNCA-CE step on this backend,
with each copy's operand and users, and copies of convolution kernels, for five ways of ordering
the in-place writes after the reads. "ordered" is rsjax.train.embed._ordered_after as committed
with it (the zero ``where(isfinite(s), s, 0) * 0``); "old_eq" the form before (``float(s == s) * 0``)."""
import functools, os, re, sys, time
sys.path.insert(0, "tests")
import jax, jax.numpy as jnp, numpy as np
from rsjax.train import embed
from tiny_embed import tiny_cfg, B, C, SIZE

ORDERED = embed._ordered_after
def _with_zero(zero_fn):
    def f(scalar, tree):
        zero = zero_fn(scalar)
        return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)
    return f


def _while_zero(s):
    ok = s == s
    trips, one = ok.astype(jnp.int32), ok.astype(jnp.float32)
    return jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, c[1] * one), (jnp.int32(0), jnp.float32(0)))[1]


VARIANTS = {"ordered": ORDERED,
            "old_eq": _with_zero(lambda s: (s == s).astype(jnp.float32) * 0.0),
            "mul0": _with_zero(lambda s: s.astype(jnp.float32) * 0.0),
            "while": _with_zero(_while_zero),
            "none": lambda scalar, tree: tree}


def build(method, n, dim, real=False, size=SIZE, batch=B):
    cfg = tiny_cfg(method, dim=dim)
    if real:
        from rsjax import configs
        cfg = configs.get(method); cfg.image_size, cfg.batch_size = size, batch
    model = embed.build_model(cfg, C)
    v = embed.init_variables(model, size, seed=0)
    if not model.num_classes:
        v = {"params": {k: p for k, p in v["params"].items() if k != "fc2"}, "batch_stats": v["batch_stats"]}
    tx = embed.make_optimizer(cfg, steps_per_epoch=max(n // batch, 1))
    labels = (np.arange(n) % C).astype(np.int32)
    state = embed.create_state(cfg, v, tx, labels)
    images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    return cfg, model, tx, (state, jnp.asarray(images), jnp.asarray(labels[:batch]), jnp.arange(batch, dtype=jnp.int32), jnp.int32(0))


def report(name, text, n, d):
    lines = text.splitlines()
    defs = {}
    for l in lines:
        m = re.match(r"\s*(?:ROOT )?(%\S+) = ", l)
        if m:
            defs[m.group(1)] = l.strip()
    copies = [l.strip() for l in lines if re.search(rf"= f32\[{n},{d}\]\{{[0-9,]*\}} copy\(", l)]
    print(f"{name}: {len(copies)} bank copies", flush=True)
    for c in copies[:4]:
        print("  COPY    ", c[:300])
        op = re.search(r"copy\((%[^),\s]+)", c)
        if op:
            print("  operand ", defs.get(op.group(1), "?")[:300])
        cname = re.match(r"(?:ROOT )?(%\S+) = ", c).group(1)
        for l in lines:
            if re.search(re.escape(cname) + r"[),]", l) and not l.strip().startswith(cname + " ="):
                print("  user    ", l.strip()[:300])
    return len(copies)


def main():
    cases = [("snca-ce-mb", 32, 8, False), ("snca-ce-mu", 32, 8, False), ("ce", 32, 8, False),
             ("snca-ce-mb", 4096, 128, False), ("snca-ce-mb", 16384, 128, False), ("snca-ce-mu", 16384, 128, False)]
    for method, n, d, real in cases:
        for vname, fn in VARIANTS.items():
            if (n > 32) and vname != "ordered":
                continue
            embed._ordered_after = fn
            t = time.time()
            cfg, model, tx, args = build(method, n, d, real)
            text = jax.jit(embed.make_step(cfg, model, tx), donate_argnums=(0,)).lower(*args).compile().as_text()
            report(f"{method} N={n} D={d} {vname} ({time.time() - t:.1f} s)", text, n, d)
            kernels = re.findall(r"copy\(%state_(?:ema_)?params\S*kernel", text)
            print(f"   kernel copies: {len(kernels)}", flush=True)
            if os.environ.get("OUT") and vname == "ordered" and n == 32:
                open(os.path.join(os.environ["OUT"], f"hlo_{method}.txt"), "w").write(text)
    embed._ordered_after = ORDERED
    if os.environ.get("RSJAX_DIAG_REAL"):
        t = time.time()
        cfg, model, tx, args = build("snca-ce-mb", 2100, 128, real=True, size=64, batch=64)
        text = jax.jit(embed.make_step(cfg, model, tx), donate_argnums=(0,)).lower(*args).compile().as_text()
        report(f"ResNet18 snca-ce-mb 64 px N=2100 D=128 ({time.time() - t:.1f} s)", text, 2100, 128)


if __name__ == "__main__":
    print(jax.devices(), flush=True)
    main()
