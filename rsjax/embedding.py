"""Scene-embedding runs end to end: dataset -> stratified split -> training (SNCA-CE and
baselines) -> the three evaluations (kNN, k-means, retrieval) -> table, JSON and figures.

A run lives in one directory (its *workdir*): ``config.json``, ``training_set.json``, ``history.json``,
``checkpoints/epoch_XXXX`` (orbax), ``results.json``, ``embeddings.npz`` and the figures. ``rsjax embed`` and the
experiments call the functions here, so both report the same numbers.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from rsjax.data.paths import DataError
from rsjax.data.scenes import SceneImages, load_scene_images, stratified_split
from rsjax.metrics.retrieval import KS


#: What an evaluation writes to its folder (:func:`evaluate_run` with ``out_dir``).
EVALUATION_FILES = ("results.json", "embeddings.npz", "tsne.png", "similarity.png", "retrieval.png", "pr_curve.png",
                    "learning_curve.png")


def load_split(cfg) -> tuple[SceneImages, dict[str, np.ndarray]]:
    """The dataset of ``cfg`` and its stratified train/val/test indices (deterministic per seed).
    A dataset other than the one a run was trained on (``cfg.data_sha1``, when set) is refused, as
    is one too small for the evaluation."""
    if cfg.get("data_sha1", "") and Path(cfg.dataset).is_absolute() and not Path(cfg.dataset).exists():
        raise DataError(f"{cfg.dataset}: the run's dataset is not there any more; if it has moved, pass --dataset "
                        "NEW_PATH (embed evaluate and retrieve; embed train --dataset NEW_PATH resumes), "
                        "checked against the sha1 the run recorded.")
    data = load_scene_images(cfg.dataset, _load_size(cfg))
    if cfg.get("data_sha1", ""):          # a trained run's dataset: the same one only
        _check_same_data(cfg.data_sha1, data.fingerprint(), cfg.dataset)
    train, val, test = stratified_split(data.labels, int(cfg.seed), tuple(cfg.split))
    if train.size < int(cfg.batch_size):
        raise DataError(f"{cfg.dataset}: the training split has {train.size} images, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size.")
    k = max(*KS, int(cfg.knn_k))
    if train.size < k or test.size < data.n_classes:
        raise DataError(f"{cfg.dataset}: too small to evaluate: its training split has {train.size} images and its "
                        f"test split {test.size}, but kNN needs at least {k} training images and k-means at least "
                        f"one test image per class ({data.n_classes}); use a dataset with more images per class.")
    return data, {"train": train, "val": val, "test": test}


def _load_size(cfg) -> int | None:
    """The size a run holds its images at (``cfg.load_size``; None: as stored)."""
    return int(cfg.get("load_size", 0)) or None


def _check_same_data(stored_sha1: str, sha1: str, name: str) -> None:
    """Refuse the dataset ``name`` of fingerprint ``sha1`` (:meth:`SceneImages.fingerprint`) when a
    run recorded another one (``stored_sha1``; "" for runs made before rsjax recorded it)."""
    if stored_sha1 and stored_sha1 != sha1:
        raise DataError(f"{name}: its images or labels have changed since this run was trained on it (sha1 "
                        f"{stored_sha1[:12]}... then, {sha1[:12]}... now); the split, the memory bank "
                        "and the scores would not match the training. Use the dataset the run was trained on, or "
                        "train into another directory.")


def _preprocess(cfg):
    from rsjax.data.augment import preprocess
    return functools.partial(preprocess, size=int(cfg.image_size))


def train_run(cfg, workdir: str | Path, progress: bool = True, extra: dict | None = None) -> dict:
    """Train ``cfg.method`` on the train split (resuming from ``workdir`` if it holds a run), then
    evaluate on the test split; returns the results, with ``extra`` added (for example the
    machine), also written to ``workdir/results.json``."""
    from rsjax.data.augment import augment
    from rsjax.data.scenes import dataset_key
    from rsjax.train.embed import build_model, check_resumable, knn_val_fn, train
    cfg = ml_collections.ConfigDict(cfg.to_dict())     # the caller's config stays as it was
    cfg.dataset = dataset_key(cfg.dataset)             # a path recorded absolute
    check_resumable(workdir, cfg, ignore=("dataset", "data_sha1"))  # settings before loading; the data: below
    data, split = load_split(cfg)
    cfg.data_sha1 = data.fingerprint()     # stored in config.json: resuming or evaluating checks it
    stored = Path(workdir) / "config.json"
    if stored.exists():                    # a run to resume: on the same data only
        _check_same_data(json.loads(stored.read_text()).get("data_sha1", ""), cfg.data_sha1, cfg.dataset)
    cfg.num_classes = data.n_classes
    train_set, val = data.subset(split["train"]), data.subset(split["val"])
    del data                               # while training, only its training and validation images are held
    model = build_model(cfg, cfg.num_classes)
    val_fn = knn_val_fn(model, val.images, val.labels, k=int(cfg.knn_k), batch_size=int(cfg.eval_batch_size),
                        preprocess=_preprocess(cfg), train_images=train_set.images) if len(val) else None
    train(cfg, train_set, workdir=workdir, val_fn=val_fn, progress=progress,
          augment=functools.partial(augment, size=int(cfg.image_size)))
    del train_set, val, val_fn             # the evaluation loads the dataset again
    return evaluate_run(workdir, out_dir=workdir, extra=extra)


def locate_run(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for ``path``: a run directory (its newest checkpoint) or one of
    its ``checkpoints/epoch_XXXX`` (that one)."""
    from rsjax.train.embed import EPOCH_CHECKPOINT, latest_checkpoint
    path = Path(path)
    if EPOCH_CHECKPOINT.match(path.name) and path.parent.name == "checkpoints":
        workdir, ckpt = path.parent.parent, path
    else:
        workdir, latest = path, latest_checkpoint(path)
        ckpt = latest[1] if latest else None
    if not (workdir / "config.json").exists() or ckpt is None or not ckpt.is_dir():
        raise DataError(f"{path}: not a training run or one of its checkpoints (no config.json or "
                        "checkpoints/epoch_*); pass the --workdir of 'rsjax embed train' or a checkpoint in it.")
    return workdir, ckpt


class LoadedRun(NamedTuple):
    cfg: ml_collections.ConfigDict
    model: Any
    variables: dict
    data: SceneImages
    split: dict[str, np.ndarray]
    workdir: Path
    checkpoint: Path


def load_run(path: str | Path, dataset: str | Path | None = None) -> LoadedRun:
    """A trained run's settings, model, variables, dataset and split, from a run directory (its
    newest checkpoint) or one of its checkpoints (:func:`locate_run`). ``dataset``: where the run's
    dataset is now, when it has moved (checked against the sha1 the run recorded)."""
    from rsjax.train import checkpoint
    from rsjax.train.embed import build_model
    workdir, ckpt = locate_run(path)
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if dataset is not None:
        from rsjax.data.scenes import dataset_key
        cfg.dataset = dataset_key(dataset)
    data, split = load_split(cfg)
    model = build_model(cfg, data.n_classes)
    try:
        state = checkpoint.restore(ckpt)
    except Exception as e:   # orbax's errors for a missing or damaged checkpoint vary
        raise DataError(f"{ckpt}: cannot be restored ({type(e).__name__}: {str(e)[:200]}); it is incomplete or "
                        "damaged: delete it, and the run's newest remaining checkpoint is used.") from e
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return LoadedRun(cfg, model, variables, data, split, workdir, ckpt)


def evaluate_run(path: str | Path, queries: str | None = None, out_dir: str | Path | None = None,
                 extra: dict | None = None, dataset: str | Path | None = None) -> dict:
    """kNN accuracy/F1 (K = 1, 5, 10), k-means NMI/ACC and retrieval (mAP, MAP@R, P@1, R@K, PR
    curve) of the test split against the training archive, for a run directory (its newest
    checkpoint) or one of its checkpoints; with ``queries`` (a dataset name or path whose classes
    are two or more of the run's, named alike), those images are the queries instead. ``extra`` is
    added to the results. With ``out_dir``, the results go to ``out_dir/results.json``, with the
    figures beside them. ``dataset``: as in :func:`load_run`."""
    from rsjax.metrics.retrieval import evaluate_embeddings
    from rsjax.train.embed import embed
    run = load_run(path, dataset)
    cfg, model, variables, data, split = run.cfg, run.model, run.variables, run.data, run.split
    pre = _preprocess(cfg)
    emb = lambda images: embed(model, variables, images, batch_size=int(cfg.eval_batch_size), preprocess=pre)
    archive = emb(data.images[split["train"]])
    if queries is None:
        q_images, q_labels = data.images[split["test"]], data.labels[split["test"]]
    else:
        q_images, q_labels = _queries(queries, data, split["train"], _load_size(cfg))
    q_emb = emb(q_images)
    if np.bincount(q_labels).max() == 1:
        print(f"note: the {len(q_labels)} queries hold one image per class, so k-means (one cluster per class) scores "
              "NMI and ACC 100 whatever the embedding; use a dataset with more test images per class.", file=sys.stderr)
    results = evaluate_embeddings(archive, data.labels[split["train"]], q_emb, q_labels, data.n_classes,
                                  seed=int(cfg.seed), class_names=data.class_names, threads=1)
    results["method"], results["dataset"], results["queries"] = cfg.method, cfg.dataset, queries or "test split"
    results["checkpoint"] = run.checkpoint.name
    results.update(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"--out {out}: cannot make the folder for the results ({type(e).__name__}: {e}); "
                            "pass a folder you can write to.") from e
        q_index = split["test"] if queries is None else np.arange(len(q_labels))
        _write_embeddings(out / "embeddings.npz", archive=archive, archive_labels=data.labels[split["train"]],
                          archive_index=split["train"], queries=q_emb, query_labels=q_labels, query_index=q_index,
                          class_names=np.array(data.class_names))
        from rsjax.train.checkpoint import write_json_atomic
        write_json_atomic(out / "results.json", results)   # experiments take the file as a finished run's mark
        _figures(out, run, results, (q_images, q_emb, q_labels), archive)
    return results


def _write_embeddings(path: Path, **arrays) -> None:
    """The evaluation's embeddings, for use outside rsjax: ``archive`` (the training split's, N x D,
    L2-normalised), ``archive_labels``, ``archive_index`` (their rows in the dataset), ``queries``,
    ``query_labels`` (as indices into ``class_names``), ``query_index`` (rows of the dataset's test
    split, or of the ``--queries`` dataset). Written through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _queries(queries: str, data: SceneImages, train: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The images (held at ``size`` as the run's, :func:`_load_size`) and labels (as indices into
    the run's classes) of a query dataset whose classes are two or more of the run's; a warning
    names queries whose file names are training images'."""
    q = load_scene_images(queries, size)
    unknown = [c for c in q.class_names if c not in data.class_names]
    if unknown:
        case = [c for c in unknown if c.lower() in {n.lower() for n in data.class_names}]
        raise DataError(f"{queries}: class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"{'are' if len(unknown) > 1 else 'is'} not among the run's {data.n_classes} classes "
                        f"({', '.join(data.class_names)}); queries must come from those classes, named alike"
                        + (f" (letter case differs: {', '.join(case)})." if case else "."))
    labels = np.array([data.class_names.index(c) for c in q.class_names], np.int32)[q.labels]
    if np.unique(labels).size < 2:
        raise DataError(f"{queries}: its images are of one class; k-means and the macro F1 need queries of two "
                        "or more of the run's classes.")
    if q.files is not None and data.files is not None:
        archive = {Path(data.files[i]).name for i in train}
        same = [f for f in q.files if Path(f).name in archive]
        if same:
            print(f"warning: {len(same)} of the {len(q)} queries have the file name of a training image "
                  f"(e.g. {Path(same[0]).name}); if they are the same images, the scores overstate the model.",
                  file=sys.stderr)
    return q.images, labels


def _figures(out: Path, run: LoadedRun, results: dict, queries: tuple, archive: np.ndarray) -> None:
    """t-SNE, similarity matrix, PR curve and retrieval examples of the queries (images,
    embeddings, labels) against the archive embeddings; the learning curve from the run's history."""
    from rsjax.plots.embedding import (learning_curves_figure, pr_curves_figure, retrieval_figure,
                                       similarity_matrix_figure, tsne_figure)
    cfg, names, train = run.cfg, run.data.class_names, run.split["train"]
    q_images, q_emb, q_labels = queries
    if len(q_emb) >= 3:
        tsne_figure(q_emb, q_labels, out / "tsne.png", names, seed=int(cfg.seed), title=f"{cfg.method}: t-SNE")
    else:                           # t-SNE needs 3 points; no stale figure of another evaluation is left
        (out / "tsne.png").unlink(missing_ok=True)
        print(f"note: no t-SNE figure for {len(q_emb)} queries (it needs 3 or more).", file=sys.stderr)
    similarity_matrix_figure(q_emb, q_labels, out / "similarity.png", names, title=f"{cfg.method}")
    pr_curves_figure({cfg.method: results}, out / "pr_curve.png", title="test queries vs train archive")
    retrieval_figure(q_images, q_emb, q_labels, run.data.images[train], archive, run.data.labels[train],
                     out / "retrieval.png", k=5, class_names=names, seed=int(cfg.seed))
    history_path = run.workdir / "history.json"
    if history_path.exists():
        history = json.loads(history_path.read_text())
        vals = [h["val_knn_acc"] for h in history if "val_knn_acc" in h]
        if vals:
            learning_curves_figure({cfg.method: [100 * v for v in vals]}, out / "learning_curve.png")


def retrieve(path: str | Path, image_path: str | Path, k: int = 5, out_png: str | Path | None = None,
             dataset: str | Path | None = None):
    """The ``k`` training-archive images nearest to one image file: ``[(file, class, cosine)]``,
    and a PNG of the query with its neighbours; ``path``: a run directory or one of its checkpoints;
    ``dataset``: as in :func:`load_run`."""
    from rsjax.data.scenes import read_image
    from rsjax.metrics.retrieval import nearest_neighbors
    from rsjax.train.embed import embed
    run = load_run(path, dataset)
    cfg, model, variables, data, split = run.cfg, run.model, run.variables, run.data, run.split
    if not 1 <= k <= split["train"].size:
        raise DataError(f"-k {k}: the run's archive (its training split) holds {split['train'].size} images; "
                        "ask for 1 to that many.")
    if not Path(image_path).is_file():
        raise DataError(f"{image_path}: no such image file; pass a JPEG, PNG or TIFF file.")
    query = read_image(Path(image_path), data.image_size)[None]
    pre = _preprocess(cfg)
    archive_images = data.images[split["train"]]
    archive = embed(model, variables, archive_images, batch_size=int(cfg.eval_batch_size), preprocess=pre)
    q = embed(model, variables, query, batch_size=1, preprocess=pre)
    idx, sims = nearest_neighbors(q, archive, k)
    train_idx = split["train"][idx[0]]
    names = [data.files[i] if data.files else f"#{i}" for i in train_idx]
    found = [(n, data.class_names[data.labels[i]], float(s)) for n, i, s in zip(names, train_idx, sims[0])]
    if out_png is not None:
        _query_figure(query[0], archive_images[idx[0]], found, out_png)
    return found


def _query_figure(query: np.ndarray, neighbours: np.ndarray, found, path) -> Path:
    from rsjax.plots.common import plt, savefig
    fig, axes = plt.subplots(1, len(found) + 1, figsize=(2.2 * (len(found) + 1), 2.6))
    axes[0].imshow(query)
    axes[0].set_title("query", fontsize=8)
    for ax, img, (name, cls, sim) in zip(axes[1:], neighbours, found):
        ax.imshow(img)
        ax.set_title(f"{cls}\ncos {sim:.3f}", fontsize=7)
    for ax in axes:
        ax.set_axis_off()
    return savefig(fig, path)
