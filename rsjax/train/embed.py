"""Training scene embeddings: SNCA-CE (MB and MU), SNCA, and the D-CNN, triplet and CE baselines.

The state is an explicit pytree (:class:`EmbedState`): step, parameters, BatchNorm statistics,
optimiser state, the memory bank (``N x D``, one row per training image) with the labels of
its rows, and for the MU methods the momentum encoder's parameters and BatchNorm statistics.

:func:`make_step` builds one pure function per method,
``step(state, images, labels, idx, epoch) -> (state, metrics)``, which :func:`compile_step`
jits once with the state donated (the bank is updated in place), on one device or
data-parallel over a mesh (:mod:`rsjax.parallel`). Inside a step:

1. forward the (already augmented, float32 NHWC) batch in training mode (batch statistics);
2. the loss: ``CE + lambda * SNCA`` against the INCOMING bank (SNCA-CE), SNCA alone,
   ``CE + lambda * D-CNN's pairwise term`` (D-CNN), the triplet loss, or CE alone;
3. SGD (Nesterov momentum 0.9, PyTorch-style weight decay 1e-4, lr halved every 30 epochs);
4. the bank rows of the batch are written after the logits were taken from it:
   MB: ``bank[idx] = normalise(m * bank[idx] + (1 - m) * f)``, ``m`` by epoch
   (:func:`rsjax.bank.bank_momentum`); MU: the momentum encoder (parameters
   ``theta_aux^(t)``, its own batch statistics) embeds the batch and its features overwrite
   ``bank[idx]``, then ``theta_aux = m theta_aux + (1 - m) theta^(t+1)`` (m = 0.999), every step
   as in the authors' code and the paper's Algorithm 2 (its text says the bank is replaced "after
   each training epoch"). The
   baselines, which need no bank, store their own (detached) batch embeddings there, so
   ``state.bank`` is always the latest training embedding of every image.

:func:`train` runs epochs of fixed-shape batches (remainder dropped), with a user-given
augmentation, a checkpoint every epoch (orbax, atomic; a rerun resumes from the latest), a
validation callback (e.g. kNN accuracy, :func:`knn_val_fn`) and a tqdm progress bar.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax import bank as bank_lib
from rsjax import losses
from rsjax import parallel
from rsjax.data.paths import DataError
from rsjax.models.layers import compute_dtype
from rsjax.models.resnet import ResNet
from rsjax.train import apply_model, checkpoint

METHODS = ("snca-ce-mb", "snca-ce-mu", "snca-mb", "snca-mu", "dcnn", "triplet", "ce")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a method's loss and bank update are made of."""
    ce: bool                 # cross-entropy on FC2 logits
    metric: str | None       # 'snca' | 'contrastive' | 'triplet' | None
    bank_update: str         # 'mb' (momentum write) | 'mu' (momentum encoder) | 'store' (own features)


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method name (one of :data:`METHODS`)."""
    specs = {
        "snca-ce-mb": MethodSpec(True, "snca", "mb"),
        "snca-ce-mu": MethodSpec(True, "snca", "mu"),
        "snca-mb": MethodSpec(False, "snca", "mb"),
        "snca-mu": MethodSpec(False, "snca", "mu"),
        "dcnn": MethodSpec(True, "contrastive", "store"),
        "triplet": MethodSpec(False, "triplet", "store"),
        "ce": MethodSpec(True, None, "store"),
    }
    if method not in specs:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
    return specs[method]


@flax.struct.dataclass
class EmbedState:
    """Everything a training run carries from step to step (a pytree; checkpointed whole)."""
    step: jax.Array              # int32 scalar: optimiser steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    bank: jax.Array              # N x D embeddings of the training images
    bank_labels: jax.Array       # N int32 labels of the bank rows
    ema_params: Any = None       # MU: momentum encoder parameters (None otherwise)
    ema_batch_stats: Any = None  # MU: momentum encoder BatchNorm statistics


# ----------------------------------------------------------------------------- construction

def build_model(cfg, num_classes: int) -> ResNet:
    """The ResNet of ``cfg`` (``stage_sizes``, ``num_filters``, ``dim``); FC2 only for CE methods."""
    spec = method_spec(cfg.method)
    return ResNet(stage_sizes=tuple(cfg.stage_sizes), dim=int(cfg.dim), num_filters=int(cfg.num_filters),
                  num_classes=int(num_classes) if spec.ce else 0, dtype=compute_dtype(cfg.get("dtype", "float32")))


def lr_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
    """``lr * lr_decay ** (epoch // lr_decay_every)`` as a function of the step (PyTorch StepLR)."""
    return optax.exponential_decay(float(cfg.lr), transition_steps=int(cfg.lr_decay_every) * steps_per_epoch,
                                   decay_rate=float(cfg.lr_decay), staircase=True)


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and weight decay added to the gradient, as ``torch.optim.SGD``
    (applied to every parameter, BatchNorm included, as the authors' code does)."""
    return optax.chain(
        optax.add_decayed_weights(float(cfg.weight_decay)),
        optax.sgd(lr_schedule(cfg, steps_per_epoch), momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov)))


def init_variables(model: ResNet, image_size: int, seed: int, pretrained: str | Mapping | None = None) -> dict:
    """``{'params', 'batch_stats'}`` of ``model``: random (PyTorch's initialisation), then the
    backbone (and FC heads if present) replaced by ``pretrained`` (a torchvision ResNet18
    ``state_dict`` or its ``.pth`` path; see :mod:`rsjax.models.convert`).

    The random draw is traced with ``threefry_partitionable`` off: for a one-off, unsharded
    initialisation it compiles about five times faster on CPU.
    """
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    with jax.threefry_partitionable(False):
        variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(seed))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if pretrained:
        from rsjax.models.convert import load_pretrained
        variables = jax.tree.map(jnp.asarray, load_pretrained(variables, pretrained))
    return variables


def create_state(cfg, variables: Mapping, tx: optax.GradientTransformation, bank_labels,
                 seed: int | None = None) -> EmbedState:
    """A fresh :class:`EmbedState`: the given variables, a random bank (``N = len(bank_labels)``,
    :func:`rsjax.bank.init_bank`) and, for MU, a momentum encoder that starts as a copy."""
    spec = method_spec(cfg.method)
    seed = int(cfg.seed) if seed is None else seed
    fc1 = variables["params"].get("fc1")
    dim = np.shape(fc1["kernel"])[-1] if fc1 is not None else int(cfg.dim)
    if dim != int(cfg.dim):
        raise DataError(f"the model's embedding has {dim} dimensions but cfg.dim is {cfg.dim}: the bank's rows must "
                        f"be as long; build the model with build_model(cfg, ...) or set cfg.dim = {dim}.")
    params = jax.tree.map(jnp.array, variables["params"])          # own buffers: the step donates them
    batch_stats = jax.tree.map(jnp.array, variables.get("batch_stats", {}))
    bank_labels = jnp.asarray(np.asarray(bank_labels), jnp.int32)
    bank = bank_lib.init_bank(jax.random.fold_in(jax.random.key(seed), 1), int(bank_labels.shape[0]),
                              int(cfg.dim), normalise=bool(cfg.bank_init_normalise))
    mu = spec.bank_update == "mu"
    return EmbedState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), bank=bank, bank_labels=bank_labels,
                      ema_params=jax.tree.map(jnp.array, params) if mu else None,
                      ema_batch_stats=jax.tree.map(jnp.array, batch_stats) if mu else None)


# ----------------------------------------------------------------------------- the step

def make_loss_fn(cfg, model: ResNet) -> Callable:
    """``loss_fn(params, state, images, labels, idx) -> (loss, (terms, embedding, new_batch_stats))``:
    the method's training loss of a batch, differentiable in ``params``; SNCA reads ``state.bank``.

    With a CE term: ``CE + lambda * metric`` (SNCA-CE, D-CNN) or CE alone; without one
    (SNCA, triplet): the metric term alone (lambda unused).
    """
    spec = method_spec(cfg.method)
    sigma, lam, margin = float(cfg.sigma), float(cfg.lam), float(cfg.margin)

    def loss_fn(params, state: EmbedState, images, labels, idx):
        out, new_bs = apply_model(model, params, state.batch_stats, images)
        f = out["embedding"]
        terms = {}
        if spec.ce:
            terms["ce"] = losses.cross_entropy(out["logits"], labels)
            terms["accuracy"] = jnp.mean(jnp.argmax(out["logits"], -1) == labels)
        if spec.metric == "snca":
            terms["snca"] = losses.snca_loss(f, labels, idx, state.bank, state.bank_labels, sigma, margin)
        elif spec.metric == "contrastive":        # D-CNN's term (cfg.dcnn_metric "hinge") or Eq. 1
            terms["contrastive"] = (losses.dcnn_loss(f, labels, float(cfg.dcnn_tau1), float(cfg.dcnn_tau2))
                                    if cfg.get("dcnn_metric", "contrastive") == "hinge"
                                    else losses.contrastive_loss(f, labels, float(cfg.contrastive_margin)))
        elif spec.metric == "triplet":
            terms["triplet"] = losses.triplet_loss(f, labels, float(cfg.triplet_margin), str(cfg.triplet_mining))
        loss = terms["ce"] if spec.ce else 0.0
        if spec.metric is not None:
            metric = terms[spec.metric]
            loss = loss + lam * metric if spec.ce else metric
        return loss, (terms, f, new_bs)

    return loss_fn


def _ordered_after(scalar: jax.Array, tree):
    """``tree`` plus an exact zero computed from ``scalar`` (0 for any value of it, NaN and
    infinities included): the same values, which XLA can only compute once ``scalar`` is (see
    :func:`make_step`). The zero is ``scalar * 0`` (``scalar`` made finite first), which XLA
    cannot fold for a float; XLA:GPU folded the earlier ``float(scalar == scalar) * 0``."""
    s = scalar.astype(jnp.float32)
    zero = jnp.where(jnp.isfinite(s), s, 0.0) * 0.0
    return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)


def make_step(cfg, model: ResNet, tx: optax.GradientTransformation) -> Callable:
    """The (unjitted) training step of ``cfg.method``:
    ``step(state, images, labels, idx, epoch) -> (state, metrics)``.

    ``images``: ``B x H x W x 3`` float32, already augmented; ``labels``: ``B`` int;
    ``idx``: ``B`` bank rows, no repeats: the images' rows in the training set whose labels made the
    bank (:func:`create_state`), 0 .. N-1, not their indices in a larger dataset (the jitted step
    cannot check them: JAX drops writes to rows past the bank, and a row that is not the
    sample's own is not excluded from its SNCA neighbours); ``epoch``: int32 scalar (0-based),
    used by the MB momentum schedule. ``metrics`` holds scalars: ``loss``, the loss terms
    (``ce`` and the batch ``accuracy`` of FC2, ``snca``, ``contrastive``, ``triplet``),
    ``grad_norm`` and ``m`` (the bank or EMA momentum in use; 0 for the baselines).

    The donated bank, parameters and momentum-encoder parameters are updated in place. What is
    written is made to depend on a value computed after the last read of the old buffer
    (:func:`_ordered_after`): the bank rows and the gradients on the gradient norm, the
    momentum encoder's old parameters on its output. Without that, XLA's copy insertion
    cannot prove the writes run after the reads and copies the buffers every step: on CPU the
    whole bank twice and the 45 MB of ResNet18 parameters (twice that for MU), on an H200 the bank
    twice in the tests' small step (``tests/test_embed_step.py`` counts the copies).
    """
    spec = method_spec(cfg.method)
    loss_fn = make_loss_fn(cfg, model)
    seed = int(cfg.seed)

    def step(state: EmbedState, images, labels, idx, epoch):
        labels = labels.astype(jnp.int32)
        idx = idx.astype(jnp.int32)
        (loss, (terms, f, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, images, labels, idx)
        grad_norm = optax.global_norm(grads)
        after_backward = functools.partial(_ordered_after, grad_norm)     # in-place writes (docstring)
        updates, opt_state = tx.update(after_backward(grads), state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params, ema_bs = state.ema_params, state.ema_batch_stats
        if spec.bank_update == "mb":
            m = bank_lib.bank_momentum(epoch, float(cfg.m), tuple(cfg.m_schedule_epochs),
                                       tuple(cfg.m_schedule_values))
            bank = bank_lib.momentum_write(state.bank, idx, after_backward(f), m)
        elif spec.bank_update == "mu":
            m = jnp.float32(cfg.m)
            x_aux = images
            if cfg.shuffle_bn:
                perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed), state.step),
                                              images.shape[0])
                x_aux = images[perm]
            out_aux, ema_bs = apply_model(model, state.ema_params, state.ema_batch_stats, x_aux)
            f_hat = out_aux["embedding"]
            if cfg.shuffle_bn:
                f_hat = f_hat.at[perm].set(f_hat)           # back to the batch order
            bank = bank_lib.overwrite(state.bank, idx, after_backward(f_hat))
            ema_params = optax.incremental_update(params, _ordered_after(f_hat[0, 0], state.ema_params),
                                                  step_size=1.0 - m)
        else:
            m = jnp.float32(0.0)
            bank = bank_lib.overwrite(state.bank, idx, after_backward(f))
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                                  opt_state=opt_state, bank=bank, ema_params=ema_params,
                                  ema_batch_stats=ema_bs)
        metrics = {"loss": loss, **terms, "grad_norm": grad_norm, "m": m}
        return new_state, metrics

    return step


def make_grad_fn(cfg, model: ResNet) -> Callable:
    """``grad_fn(state, images, labels, idx) -> (loss, grads)``: the step's loss and gradient
    with respect to ``state.params`` (for inspection and tests; the step computes the same)."""
    loss_fn = make_loss_fn(cfg, model)

    def grad_fn(state, images, labels, idx):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, images, labels.astype(jnp.int32), idx.astype(jnp.int32))
        return loss, grads

    return grad_fn


def compile_step(step: Callable, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """``jax.jit`` of a step with the state donated; with ``mesh``, data-parallel: images, labels
    and idx split over ``'data'``, state and epoch replicated (the state must be placed with
    :func:`rsjax.parallel.replicate` first)."""
    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    return parallel.data_parallel(step, mesh, n_args=5, batch_argnums=(1, 2, 3), donate_argnums=(0,))


# ----------------------------------------------------------------------------- evaluation

def embed(model: ResNet, state_or_variables, images: np.ndarray, *, batch_size: int = 256,
          preprocess: Callable | None = None) -> np.ndarray:
    """Normalised embeddings (``N x D`` float32) of ``images`` in evaluation mode (running
    BatchNorm statistics), in fixed-shape batches (the last one padded, so it compiles once).

    ``preprocess(batch) -> float32 NHWC`` is applied to each batch on device; the default
    (:func:`rsjax.data.augment.preprocess` without resizing) scales ``uint8`` images to [0, 1]
    and ImageNet-normalises them; float images are used as they are.
    """
    from rsjax.data.scenes import eval_batches
    if isinstance(state_or_variables, EmbedState):
        variables = {"params": state_or_variables.params, "batch_stats": state_or_variables.batch_stats}
    else:
        variables = state_or_variables
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"embed takes a batch of RGB images, (N, H, W, 3), got shape {images.shape}"
                        + ("; for one image pass images[None]." if images.ndim == 3 and images.shape[-1] == 3 else "."))
    if preprocess is None:
        preprocess = _default_preprocess
    apply = _eval_apply(model)
    out = np.zeros((images.shape[0], model.dim), np.float32)
    if images.shape[0] == 0:
        return out
    bs = min(int(batch_size), images.shape[0])
    for idx, mask in eval_batches(images.shape[0], bs):
        e = apply(variables, preprocess(jnp.asarray(images[idx])))
        out[idx[mask]] = np.asarray(e)[mask]
    return out


def _default_preprocess(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.uint8:
        from rsjax.data.augment import preprocess
        return preprocess(x, None)
    return x.astype(jnp.float32)


@functools.lru_cache(maxsize=16)
def _eval_apply(model: ResNet) -> Callable:
    """The jitted evaluation forward of ``model`` (modules are hashable; one compile per model)."""
    return jax.jit(lambda v, x: model.apply(v, x, train=False)["embedding"])


def knn_val_fn(model: ResNet, val_images: np.ndarray, val_labels: np.ndarray, *, k: int = 10,
               batch_size: int = 256, preprocess: Callable | None = None,
               train_images: np.ndarray | None = None) -> Callable:
    """A validation callback for :func:`train`: ``val_fn(state, epoch) -> kNN accuracy`` (K = ``k``,
    scikit-learn's distance-weighted kNN, :func:`rsjax.metrics.retrieval.knn_scores`).

    The archive is ``state.bank`` with ``state.bank_labels`` (as the authors' MB code
    validates), or, with ``train_images`` (in bank order), their embeddings recomputed in
    evaluation mode (as the authors' MU code validates).
    """
    from rsjax.metrics.retrieval import knn_scores
    val_labels = np.asarray(val_labels)

    def val_fn(state: EmbedState, epoch: int) -> float:
        if train_images is None:
            archive = np.asarray(jax.device_get(state.bank))
        else:
            archive = embed(model, state, train_images, batch_size=batch_size, preprocess=preprocess)
        queries = embed(model, state, val_images, batch_size=batch_size, preprocess=preprocess)
        y = np.asarray(jax.device_get(state.bank_labels))
        return knn_scores(archive, y, queries, val_labels, ks=(k,))[k]["oa"]

    return val_fn


# ----------------------------------------------------------------------------- the loop

EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)$")


def latest_checkpoint(workdir: str | Path) -> tuple[int, Path] | None:
    """(completed epochs, path) of the newest complete checkpoint under ``workdir/checkpoints``."""
    d = Path(workdir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in d.glob("epoch_*") if (m := EPOCH_CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found) if found else None


def _unpack_data(data) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, Mapping):
        images, labels = np.asarray(data["images"]), np.asarray(data["labels"])
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = np.asarray(data[0]), np.asarray(data[1])
    else:
        images, labels = np.asarray(data.images), np.asarray(data.labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"training images must be (N, H, W, 3) RGB, got shape {images.shape}; "
                        "stack grey images into three channels first.")
    if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataError(f"training labels must be {images.shape[:1]} integers of 0 or more (class indices), got "
                        f"{labels.shape} {labels.dtype}" + (f" from {labels.min()}" if labels.size else "") + ".")
    return images, labels


# Config fields a resumed run may change: how long it trains, how often it logs, what it keeps.
RESUMABLE_FIELDS = ("epochs", "log_every", "keep_checkpoints", "eval_batch_size", "knn_k")


def config_conflicts(stored: Mapping, cfg) -> list[str]:
    """``'field: stored -> requested'`` for every field of a run's stored ``config.json``, other than
    :data:`RESUMABLE_FIELDS`, in which ``cfg`` differs (an empty list: ``cfg`` continues that run);
    the bank-momentum schedules are compared as far as they act (:func:`_effective_schedule`).
    Fields the stored config lacks (added to rsjax after the run was made) are not compared, nor are
    a requested ``num_classes`` of 0 and ``data_sha1`` of "" (taken from the data, as the stored ones
    were; :mod:`rsjax.embedding` compares the data itself); datasets compare by :func:`_same_dataset`."""
    wanted = json.loads(cfg.to_json())
    stored = _effective_schedule(stored, cfg)
    wanted = _effective_schedule(wanted, cfg)
    return [f"{k}: {stored[k]!r} -> {wanted.get(k)!r}" for k in sorted(stored)
            if k not in RESUMABLE_FIELDS and stored[k] != wanted.get(k)
            and not (k in ("num_classes", "data_sha1") and not wanted.get(k))
            and not (k == "dataset" and _same_dataset(stored, wanted))]


def _same_dataset(stored: Mapping, wanted: Mapping) -> bool:
    """Whether two configs name the same dataset: by its sha1 when both know it (so a dataset that
    moved is still the same), else by name or absolute path (runs made before rsjax recorded either
    stored the path as typed)."""
    from rsjax.data.scenes import dataset_key
    if stored.get("data_sha1") and wanted.get("data_sha1"):
        return stored["data_sha1"] == wanted["data_sha1"]
    return dataset_key(stored["dataset"]) == dataset_key(wanted["dataset"])


def _effective_schedule(c: Mapping, cfg) -> dict:
    """``c`` with the MB bank-momentum schedule cut to the steps that act within ``cfg.epochs``
    epochs of ``cfg.method`` (none for a method without an MB bank), so that runs which trained
    alike compare equal whatever schedule steps they listed past their end."""
    c = dict(c)
    if "m_schedule_epochs" in c and "m_schedule_values" in c:
        mb = method_spec(cfg.method).bank_update == "mb"
        steps = [(e, v) for e, v in zip(c["m_schedule_epochs"], c["m_schedule_values"]) if mb and e < int(cfg.epochs)]
        c["m_schedule_epochs"], c["m_schedule_values"] = [e for e, _ in steps], [v for _, v in steps]
    return c


def check_resumable(workdir: str | Path, cfg, ignore: tuple[str, ...] = ()) -> None:
    """Raise a :class:`DataError` naming :func:`config_conflicts` (but those of the fields in
    ``ignore``) when ``workdir`` holds a run (its ``config.json``) that ``cfg`` would not continue."""
    path = Path(workdir) / "config.json"
    conflicts = config_conflicts(json.loads(path.read_text()), cfg) if path.exists() else []
    conflicts = [c for c in conflicts if c.split(":", 1)[0] not in ignore]
    if conflicts:
        raise DataError(f"{workdir} holds a run with other settings ({'; '.join(conflicts)}): resuming "
                        "it would mix the two. Train into another directory, or delete this one to start afresh.")


def train(cfg, data, *, workdir: str | Path, augment: Callable | None = None,
          val_fn: Callable | None = None, mesh: jax.sharding.Mesh | None = None,
          progress: bool = True, variables: Mapping | None = None) -> dict:
    """Train ``cfg.method`` on the training set ``data`` for ``cfg.epochs`` epochs.

    Args:
      cfg: a config of :mod:`rsjax.configs` (e.g. ``rsjax.configs.get('snca-ce-mb')``).
      data: the training images and labels: a :class:`rsjax.data.scenes.SceneImages`, a mapping
        with ``images`` and ``labels``, or an ``(images, labels)`` pair. Image ``i`` is bank row ``i``.
      workdir: checkpoints go to ``workdir/checkpoints/epoch_XXXX`` (the last
        ``cfg.keep_checkpoints`` kept), the per-epoch history to ``workdir/history.json``. If a
        checkpoint exists, training resumes after it, if ``cfg`` continues that run
        (:func:`check_resumable`: only :data:`RESUMABLE_FIELDS` may differ).
      augment: ``augment(images, key) -> float32 NHWC`` applied to every batch before the step,
        e.g. ``functools.partial(rsjax.data.augment.augment, size=cfg.image_size)``; the key is
        ``rsjax.data.augment.augment_key(cfg.seed, step)``. Default: no augmentation (uint8 ->
        ImageNet-normalised float).
      val_fn: ``val_fn(state, epoch) -> float`` (e.g. :func:`knn_val_fn`), called after every
        epoch and recorded as ``val_knn_acc``.
      mesh: run data-parallel over this mesh (batch size divisible by its size).
      progress: show a tqdm bar with the loss and images per second.
      variables: initial ``{'params', 'batch_stats'}`` (default: :func:`init_variables`).

    Returns ``{'state', 'history', 'model'}``. Batches have a fixed shape (the remainder of
    an epoch is dropped) and their order depends only on ``(cfg.seed, epoch)``, so a resumed
    run continues exactly as an uninterrupted one.
    """
    from rsjax.data.augment import augment_key
    from rsjax.data.scenes import train_batches
    images, labels = _unpack_data(data)
    labels = labels.astype(np.int32)
    n, bs = images.shape[0], int(cfg.batch_size)
    least = {"triplet": 3, "contrastive": 2}.get(method_spec(cfg.method).metric, 1)
    if bs < least:          # its pairs or triplets come from within the batch: a smaller one has none
        raise DataError(f"{cfg.method} forms its pairs or triplets within a batch, and a batch of {bs} has none; "
                        f"use a batch size of {least} or more (in practice dozens).")
    steps_per_epoch = n // bs
    num_classes = int(cfg.num_classes) or int(labels.max()) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels span [{labels.min()}, {labels.max()}] but cfg.num_classes is {num_classes}: labels "
                        f"must be 0 .. num_classes - 1; set num_classes to {int(labels.max()) + 1} (or 0: from the "
                        "labels), or number the classes from 0.")
    model = build_model(cfg, num_classes)
    tx = make_optimizer(cfg, max(steps_per_epoch, 1))
    if variables is None:
        variables = init_variables(model, int(cfg.image_size), int(cfg.seed), cfg.pretrained or None)
    state = create_state(cfg, variables, tx, labels)

    workdir = Path(workdir)
    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    history_path = workdir / "history.json"
    history: list[dict] = []
    start_epoch = 0
    fingerprint = {"images": int(n), "sha1": _sha1(images, labels)}
    latest = latest_checkpoint(workdir)
    if latest is not None:
        check_resumable(workdir, cfg)
        start_epoch, path = latest
        if start_epoch > int(cfg.epochs):
            raise DataError(f"{workdir} holds a run of {start_epoch} epochs, more than the {cfg.epochs} asked for: "
                            f"ask for {start_epoch} or more epochs, evaluate its checkpoint of epoch {cfg.epochs} "
                            "if it is kept, or train into another directory.")
        state = checkpoint.restore(path, like=state)
        _check_same_training_set(workdir, state, labels, fingerprint)
        print(f"{workdir}: " + (f"already trained ({start_epoch} epochs)." if start_epoch == int(cfg.epochs) else
                                f"resuming after epoch {start_epoch} of {cfg.epochs}."), file=sys.stderr)
        if history_path.exists():
            history = [h for h in json.loads(history_path.read_text()) if h["epoch"] < start_epoch]
    checkpoint.write_json_atomic(workdir / "config.json", json.loads(cfg.to_json()))   # epochs as now asked
    checkpoint.write_json_atomic(workdir / TRAINING_SET_FILE, fingerprint)
    if mesh is not None:
        state = parallel.replicate(mesh, state)
    step = compile_step(make_step(cfg, model, tx), mesh)
    if augment is None:
        augment = lambda x, key: _default_preprocess(x)

    from tqdm.auto import tqdm
    log_every = max(int(cfg.log_every), 1)
    for epoch in range(start_epoch, int(cfg.epochs)):
        bar = tqdm(total=steps_per_epoch, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        t0 = tic = time.perf_counter()
        seen = 0
        losses_dev = []
        epoch_arr = jnp.int32(epoch)
        for k, bidx in enumerate(train_batches(n, bs, int(cfg.seed), epoch)):
            global_step = epoch * steps_per_epoch + k
            x = augment(jnp.asarray(images[bidx]), augment_key(int(cfg.seed), global_step))
            y, i = labels[bidx], bidx.astype(np.int32)
            if mesh is not None:
                x, y, i = parallel.shard_batch(mesh, x, y, i)
            state, metrics = step(state, x, y, i, epoch_arr)
            losses_dev.append(metrics["loss"])
            seen += bs
            if (k + 1) % log_every == 0 or k + 1 == steps_per_epoch:
                loss = float(jax.device_get(metrics["loss"]))          # the host sync of this block
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}, step {k}; lower the learning rate (cfg.lr) "
                        "or raise the temperature (cfg.sigma)")
                now = time.perf_counter()
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{seen / (now - tic):.1f}")
                tic, seen = now, 0
            bar.update(1)
        bar.close()
        record = {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses_dev))) if losses_dev else float("nan"),
                  "time": time.perf_counter() - t0}
        if val_fn is not None:
            val = val_fn(state, epoch)
            record.update(val if isinstance(val, Mapping) else {"val_knn_acc": float(val)})
        history.append(record)
        checkpoint.write_json_atomic(history_path, history)
        checkpoint.save(workdir / "checkpoints" / f"epoch_{epoch + 1:04d}", state)
        _prune_checkpoints(workdir, int(cfg.keep_checkpoints))
    return {"state": state, "history": history, "model": model}


TRAINING_SET_FILE = "training_set.json"   # in a workdir: the size and sha1 of the images and labels it trains on


def _sha1(*arrays: np.ndarray) -> str:
    import hashlib
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _check_same_training_set(workdir: Path, state: EmbedState, labels: np.ndarray, fingerprint: dict) -> None:
    """Refuse to resume a run on other training data: its bank holds one row per image it was
    trained on, so other images would train against a bank that is not theirs. Compared by the
    size and sha1 the run recorded (:data:`TRAINING_SET_FILE`), or, for a run made before rsjax
    recorded them, by its bank's rows and labels (``state``: the restored state)."""
    data_file = workdir / TRAINING_SET_FILE
    if data_file.exists():
        stored = json.loads(data_file.read_text())
        same = stored == fingerprint
        was = f"{stored['images']} images, sha1 {stored['sha1'][:12]}"
        now = f"{len(labels)}, sha1 {fingerprint['sha1'][:12]}"
    else:
        stored_labels = np.asarray(jax.device_get(state.bank_labels))
        same = np.array_equal(stored_labels, labels)
        was = f"{len(stored_labels)} images"
        now = f"{len(labels)}" + (", other labels" if len(stored_labels) == len(labels) else "")
    if not same:
        raise DataError(f"{workdir} holds a run trained on other images ({was}; now {now}): resuming it would train "
                        "against a memory bank of those images. Pass the run's training data, or train into another "
                        "directory.")


def _prune_checkpoints(workdir: Path, keep: int) -> None:
    d = Path(workdir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in d.glob("epoch_*") if (m := EPOCH_CHECKPOINT.match(p.name)))
    for _, p in found[:-max(keep, 1)]:
        shutil.rmtree(p, ignore_errors=True)
