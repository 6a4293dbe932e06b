"""Data parallelism over 8 simulated CPU devices equals the single-device step.

The device count is fixed when JAX starts, so the comparison runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from rsjax import parallel

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from rsjax import configs, parallel
    from rsjax.train import embed

    assert len(jax.devices()) == 8, jax.devices()
    N, B, C, SIZE = 32, 8, 4, 16
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), N // C).astype(np.int32)
    images = (rng.normal(size=(N, SIZE, SIZE, 3)) + labels[:, None, None, None] * 0.3).astype(np.float32)
    idx = np.array([0, 5, 9, 14, 17, 22, 27, 31], np.int32)
    x, y = images[idx], labels[idx]
    mesh = parallel.make_mesh(8)
    variables = None
    report = {}
    diff = lambda a, b: max((float(np.max(np.abs(np.asarray(u) - np.asarray(v)) / (1 + np.abs(np.asarray(v)))))
                             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)
    for method in ("snca-ce-mu",):        # SNCA + CE + the momentum encoder (with shuffle-BN) + bank write
        cfg = configs.get(method)
        cfg.shuffle_bn = True
        cfg.stage_sizes, cfg.num_filters, cfg.dim, cfg.image_size, cfg.batch_size = (1,), 4, 8, SIZE, B
        model = embed.build_model(cfg, C)
        if variables is None:
            variables = embed.init_variables(model, SIZE, 0)
        tx = embed.make_optimizer(cfg, N // B)
        fresh = lambda: embed.create_state(cfg, variables, tx, labels)
        grad_fn = embed.make_grad_fn(cfg, model)

        loss1, grads1 = jax.jit(grad_fn)(fresh(), x, y, idx)
        s1, m1 = embed.compile_step(embed.make_step(cfg, model, tx))(fresh(), x, y, idx, jnp.int32(0))

        xs, ys, is_ = parallel.shard_batch(mesh, x, y, idx)
        assert len(xs.sharding.device_set) == 8 and xs.addressable_shards[0].data.shape[0] == 1
        loss8, grads8 = parallel.data_parallel(grad_fn, mesh, n_args=4, batch_argnums=(1, 2, 3),
                                               donate_argnums=())(parallel.replicate(mesh, fresh()), xs, ys, is_)
        step8 = embed.compile_step(embed.make_step(cfg, model, tx), mesh)
        state8 = parallel.replicate(mesh, fresh())
        compiled = step8.lower(state8, xs, ys, is_, jnp.int32(0)).compile()
        hlo = compiled.as_text()
        s8, m8 = compiled(state8, xs, ys, is_, jnp.int32(0))
        assert s8.bank.sharding.is_fully_replicated and len(s8.bank.sharding.device_set) == 8
        report[method] = {
            "loss": abs(float(loss1) - float(loss8)), "step_loss": abs(float(m1["loss"]) - float(m8["loss"])),
            "grads": diff(grads8, grads1), "bank": diff(s8.bank, s1.bank), "params": diff(s8.params, s1.params),
            "batch_stats": diff(s8.batch_stats, s1.batch_stats),
            "ema": diff((s8.ema_params, s8.ema_batch_stats), (s1.ema_params, s1.ema_batch_stats)),
            "all_reduce": "all-reduce" in hlo,
        }
    print("REPORT" + json.dumps(report))
""")


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    print(report)
    for method, r in report.items():
        assert r.pop("all_reduce"), f"{method}: the sharded step has no all-reduce; was it partitioned?"
        for what, d in r.items():
            assert d < 1e-5, f"{method}: {what} differs by {d:.2e} between 8 devices and 1"


def test_helpers_on_one_device():
    mesh = parallel.make_mesh(1)
    x, = parallel.shard_batch(mesh, np.zeros((4, 2)))
    assert x.sharding.spec == parallel.batch_sharding(mesh).spec
    tree = parallel.replicate(mesh, {"a": np.ones(3)})
    assert tree["a"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="devices requested"):
        parallel.make_mesh(len(jax.devices()) + 1)
