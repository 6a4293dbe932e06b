"""Training the hyperspectral autoencoders (MS2A-Net, AE, CAE) on one whole scene.

The state is an explicit pytree (:class:`HSIState`); :func:`train_step` is one pure
iteration (forward, backward, Adam) and :func:`train_chunk` runs ``n`` of them inside a
``lax.scan`` so the host syncs once per chunk, not per iteration. For MS2A-Net the chunk first
prepares the scene's loop-invariant arrays (:func:`~rsjax.models.ms2anet.prepare_scene`: its
channels-first copy, softmax over bands and band mean) once, outside the scan. The parameters of the
lowest-loss iteration are kept on device, and M' is extracted with them. :func:`fit` trains
chunk by chunk, checkpointing the state when asked to, and resumes an interrupted training.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import sys
import threading
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax.configs import differences
from rsjax.configs.ms2anet import training_settings
from rsjax.data.paths import DataError
from rsjax.models.autoencoders import AE, CAE
from rsjax.models.layers import compute_dtype
from rsjax.models.ms2anet import MS2ANet, PreparedScene, ms2anet_loss, prepare_scene
from rsjax.train import apply_model   # x: the scene NHWC, or for MS2A-Net its PreparedScene


KEEP = ("updated", "evaluated")   # which parameters the lowest loss keeps (see train_step)
CHECKPOINT_EVERY_S = 60.0         # fit(checkpoint=...) writes the state at most this often (and at the end)


@flax.struct.dataclass
class HSIState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    best_loss: jax.Array
    best_params: Any
    best_batch_stats: Any


def build_model(cfg, bands: int) -> nn.Module:
    if cfg.method == "ms2anet":
        return MS2ANet(bands, d1=cfg.d1, d2=cfg.d2, d3=cfg.d3, dilations=tuple(cfg.dilations),
                       kernel_size=cfg.kernel_size, ablation=cfg.ablation, spf_odd=cfg.get("spf_odd", "crop"),
                       dtype=compute_dtype(cfg.get("dtype", "float32")))
    if cfg.method == "ae":
        return AE(bands, latent=cfg.latent)
    if cfg.method == "cae":
        return CAE(bands, latent=cfg.latent)
    raise ValueError(f"no trainable model for method {cfg.method!r}; use ms2anet, ae or cae.")


@partial(jax.jit, static_argnums=0)
def _init_variables(model: nn.Module, key: jax.Array, x: jax.Array) -> dict:
    """``model.init`` compiled: the same values as the eager call (tests), and jit drops the forward
    pass that init traces (its outputs are unused): 2.4 s instead of 6.8 s for MS2A-Net on
    Salinas-A on a 2-core CPU, compiled once per model and input shape."""
    return model.init(key, x, train=True)


def init_state(model: nn.Module, x: jax.Array, tx: optax.GradientTransformation, seed: int) -> HSIState:
    variables = _init_variables(model, jax.random.key(seed), x)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return HSIState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), best_loss=jnp.array(jnp.inf, jnp.float32),
                    best_params=jax.tree.map(jnp.copy, params),
                    best_batch_stats=jax.tree.map(jnp.copy, batch_stats))  # own buffers: the step donates the state


def prepare_input(model: nn.Module, x: jax.Array):
    """What the training step takes for ``x`` (N, H, W, D): a :class:`PreparedScene` for MS2A-Net
    (computed once, reused by every iteration), ``x`` itself for the other models."""
    if isinstance(model, MS2ANet) and not isinstance(x, PreparedScene):
        return prepare_scene(x)
    return x


def train_step(state: HSIState, x: jax.Array, *, model, tx, lam: float,
               keep: str = "updated") -> tuple[HSIState, jax.Array]:
    """One iteration. The loss is that of the incoming parameters. When it is the lowest so far, the
    state keeps (``keep="updated"``, the authors' code) the parameters right after this
    iteration's Adam update, as the authors' ``torch.save`` after ``optimizer.step()`` does, or
    (``keep="evaluated"``) the incoming parameters that scored the loss.
    ``x`` is the scene NHWC or :func:`prepare_input` of it (the same result, less work per call)."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    def loss_fn(params):
        out, new_bs = apply_model(model, params, state.batch_stats, x)
        return ms2anet_loss(x, out, lam), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    better = loss < state.best_loss
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)
    cand_params, cand_bs = (params, new_bs) if keep == "updated" else (state.params, state.batch_stats)
    state = HSIState(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state,
                     best_loss=jnp.where(better, loss, state.best_loss),
                     best_params=pick(cand_params, state.best_params),
                     best_batch_stats=pick(cand_bs, state.best_batch_stats))
    return state, loss


def train_chunk(state: HSIState, x: jax.Array, *, n: int, model, tx, lam: float, keep: str = "updated"):
    """``n`` iterations in one compiled ``lax.scan``; returns the state and the n losses.
    The scene is prepared once (:func:`prepare_input`), outside the scan."""
    step = partial(train_step, model=model, tx=tx, lam=lam, keep=keep)
    x = prepare_input(model, x)
    return jax.lax.scan(lambda s, _: step(s, x), state, None, length=n)


# Compiled once per process for equal static arguments, so the seeds of one run, and the scenes of
# one shape, share their compilations (the model is a frozen dataclass, compared by value; the
# optimiser comes from :func:`adam`, one object per learning rate).
_train_chunk = jax.jit(train_chunk, static_argnames=("n", "model", "tx", "lam", "keep"), donate_argnums=(0,))
_apply_model = jax.jit(apply_model, static_argnums=0)


@lru_cache(maxsize=None)
def adam(lr: float) -> optax.GradientTransformation:
    """The authors' optimiser (Adam, betas 0.9 / 0.999, eps 1e-8), one object per learning rate."""
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


def fit(cfg, cube01: np.ndarray, seed: int, progress: bool = True, checkpoint: str | Path | None = None) -> dict:
    """Train ``cfg.method`` on a min-max scaled cube (H, W, D); return the trained state,
    the loss curve, the latent code of every pixel (H, W, C) and timings.

    With ``checkpoint`` (a directory), the training state is written there atomically (orbax)
    after the last chunk and after any chunk that ends :data:`CHECKPOINT_EVERY_S` seconds or more
    after the previous write, with ``<checkpoint>.json`` beside it (the settings' fingerprint,
    the losses so far, the time spent, set-up included). A rerun with the
    same settings, cube and seed resumes from it: the chunks already trained are skipped (all of
    them when the run had finished) and the result is the uninterrupted run's (tests). A
    checkpoint of other settings, seed or cube is refused with a :class:`DataError` naming the
    differences and left as it is; one whose ``.json`` cannot be read is deleted and training starts
    afresh. On Ctrl-C the chunk in flight ends and the state is saved. ``prior_time`` in the
    result is the time that earlier calls spent, ``setup_time`` this call's time before training
    (building, initialising and restoring the model)."""
    if int(cfg.iters) < 1 or int(cfg.chunk) < 1:
        raise ValueError(f"iters and chunk must be positive, got iters={cfg.iters}, chunk={cfg.chunk}.")
    cube01 = np.asarray(cube01)
    if cube01.ndim != 3:
        raise DataError(f"fit takes one scene's cube, (H, W, D), got shape {cube01.shape}.")
    if not np.isfinite(cube01).all():
        raise DataError("the cube holds NaN or Inf values; check the scene with rsjax.data.hsi.validate (it names "
                        "NaN, Inf and constant bands) and scale it with minmax_scale.")
    t_start = time.perf_counter()
    model = build_model(cfg, cube01.shape[-1])
    tx = adam(float(cfg.lr))
    lam = float(cfg.lam) if cfg.method == "ms2anet" else 0.0
    x = jnp.asarray(cube01)[None]
    state = init_state(model, x, tx, seed)
    keep = cfg.get("keep", "updated")
    losses, prior_time, fingerprint = [], 0.0, None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = _fingerprint(cfg, cube01, seed)
        state, losses, prior_time = _resume(checkpoint, fingerprint, state)
    t0 = time.perf_counter()
    done = int(state.step)
    # chunks of cfg.chunk iterations from the start; a state saved by a run of another chunk size first
    # trains up to the next boundary (the chunking does not change what is computed)
    bounds = [b for b in range(cfg.chunk, cfg.iters, cfg.chunk) if b > done] + [cfg.iters]
    sizes = np.diff([done] + bounds).tolist() if done < cfg.iters else []
    bar = _progress(cfg.iters, f"{cfg.method} seed {seed}", progress)
    bar.update(done)
    last_save = time.perf_counter()
    chunk_losses = None
    try:
        for k, n in enumerate(sizes):
            with _signals_held():     # the donated state is replaced whole: an interrupt finds the new one
                state, chunk_losses = _train_chunk(state, x, n=n, model=model, tx=tx, lam=lam, keep=keep)
            chunk_losses = np.asarray(chunk_losses)   # the one host sync per chunk (interrupted here: saved)
            if not np.all(np.isfinite(chunk_losses)):
                at = len(losses) + int(np.argmin(np.isfinite(chunk_losses)))
                raise FloatingPointError(f"non-finite loss at iteration {at}; lower the learning rate (cfg.lr, "
                                         "--lr) or check the input scaling.")
            with _signals_held():     # the losses and the state stay in step
                losses.extend(chunk_losses.tolist())
                chunk_losses = None
                bar.update(n)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if checkpoint is not None and (k == len(sizes) - 1
                                               or time.perf_counter() - last_save >= CHECKPOINT_EVERY_S):
                    _save_progress(checkpoint, fingerprint, state, losses, prior_time + time.perf_counter() - t_start)
                    last_save = time.perf_counter()
    except KeyboardInterrupt:
        if checkpoint is not None:
            _save_interrupted(checkpoint, fingerprint, state, chunk_losses, losses,
                              prior_time + time.perf_counter() - t_start, cfg.iters)
        raise
    bar.close()
    out, _ = _apply_model(model, state.best_params, state.best_batch_stats, x)
    code = np.asarray(out["code"][0])
    train_time = time.perf_counter() - t0
    return {"state": state, "losses": np.asarray(losses), "code": code, "train_time": train_time,
            "prior_time": prior_time, "setup_time": t0 - t_start}


# ----------------------------------------------------------------------------- checkpoints and resuming

def _fingerprint(cfg, cube01: np.ndarray, seed: int) -> dict:
    """What makes two trainings the same: the settings that shape training, the seed and the cube."""
    cube = np.ascontiguousarray(cube01, np.float32)
    return {"config": training_settings(cfg), "seed": int(seed), "cube_shape": list(cube.shape),
            "cube_sha1": hashlib.sha1(cube.tobytes()).hexdigest()}


def _sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".json")


def _save_progress(checkpoint: Path, fingerprint: dict, state: HSIState, losses: list, elapsed: float) -> None:
    """The sidecar first, then the state: a run killed between the two leaves a sidecar ahead of the
    state, never behind it (``_resume`` cuts the losses to the state's step)."""
    from rsjax.train.checkpoint import save, write_json_atomic
    write_json_atomic(_sidecar(checkpoint), {"fingerprint": fingerprint, "step": len(losses),
                                             "losses": losses, "time": elapsed})
    save(checkpoint, state)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C (SIGINT) and SIGTERM held while the block runs, then delivered to their handlers: the
    block (a chunk's dispatch, which donates the state, or the bookkeeping after it) is never cut
    halfway, so an interrupt finds the state and the losses in step and :func:`_save_interrupted`
    saves them. A no-op outside the main thread, where Python does not deliver signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = {s: h for s, h in held.items() if h is not None}      # None: a handler not set from Python
    for s in held:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in held.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _save_interrupted(checkpoint: Path, fingerprint: dict, state: HSIState, chunk_losses, losses: list,
                      elapsed: float, iters: int) -> None:
    """On Ctrl-C: let the chunk in flight end (its losses, when finite, count), then save the state
    if it matches the losses recorded (:func:`_signals_held` keeps interrupts out of the dispatch,
    where ``state`` is the donated one). Any failure saves nothing: the last regular checkpoint stands."""
    try:
        if chunk_losses is not None:
            chunk = np.asarray(chunk_losses)
            if np.all(np.isfinite(chunk)):
                losses = losses + chunk.tolist()
        step = int(state.step)
        if step > 0 and step == len(losses):
            _save_progress(checkpoint, fingerprint, state, losses, elapsed)
            print(f"\n{checkpoint}: saved at iteration {step} of {iters}.", file=sys.stderr)
    except Exception:   # noqa: BLE001 - never mask the interrupt
        pass


def _resume(checkpoint: Path, fingerprint: dict, state: HSIState) -> tuple[HSIState, list, float]:
    """The saved state, its losses and time when ``checkpoint`` holds this training; else the fresh
    ``state``. A checkpoint of another training (other settings, seed or cube) is a
    :class:`DataError` naming the differences, and stays as it is; one whose sidecar cannot be
    read, so that nothing can be resumed from it, is deleted."""
    from rsjax.train.checkpoint import restore, settle
    side = _sidecar(checkpoint)
    meta = None
    if side.exists():
        try:
            meta = json.loads(side.read_text())
            diffs = differences(meta["fingerprint"], fingerprint)
        except (ValueError, KeyError, TypeError, AttributeError):
            print(f"{checkpoint}: {side.name} is unreadable; training afresh.", file=sys.stderr)
            shutil.rmtree(checkpoint, ignore_errors=True)
            side.unlink()
            meta = None
        else:
            if diffs:
                raise DataError(f"{checkpoint} holds another training ({'; '.join(diffs)}); resuming it would mix "
                                f"the two: write to another --out, or delete it and {side.name} to train afresh.")
    if meta is None or not settle(checkpoint):
        return state, [], 0.0
    try:
        state = restore(checkpoint, like=state)
    except Exception as e:   # orbax's errors for a tree of another shape vary; name the directory and the fix
        raise DataError(f"{checkpoint}: cannot be restored into this model's state ({type(e).__name__}: {e}); "
                         "delete it (and its .json) to train afresh.") from e
    step = int(state.step)
    total = int(meta["fingerprint"]["config"]["iters"])
    print(f"{checkpoint}: " + (f"already trained ({step} iterations); delete it to train again."
                               if step >= total else f"resuming at iteration {step} of {total}."), file=sys.stderr)
    return state, list(meta["losses"][:step]), float(meta["time"])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
