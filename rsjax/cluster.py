"""Hyperspectral clustering end to end: scene -> features (MS2A-Net, AE, CAE or raw spectra)
-> scikit-learn k-means -> Hungarian-matched metrics over seeds -> files.

Used by ``rsjax cluster`` and by the experiments, so both report the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from rsjax.configs import differences
from rsjax.configs.ms2anet import training_settings
from rsjax.data.hsi import Scene, minmax_scale, validate
from rsjax.data.paths import DataError
from rsjax.metrics.clustering import clustering_scores, kmeans, summarize

METHODS = ("ms2anet", "kmeans", "ae", "cae")


def cluster_once(scene: Scene, cfg, seed: int, progress: bool = False, checkpoint: str | Path | None = None) -> dict:
    """One seed: the features, the k-means labels of every pixel and the metrics on labeled pixels.
    ``time`` covers training, feature extraction and k-means (the paper's processing time; a resumed
    training counts the time of its earlier, interrupted runs too, and a finished one rerun reports
    its training time as first measured). ``checkpoint``: the directory
    where training writes its state and resumes from it (:func:`rsjax.train.hsi.fit`)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}.")
    x = minmax_scale(scene.cube)
    if cfg.method != "kmeans":
        from rsjax.train.hsi import fit  # JAX is imported only when a network is trained, and not timed
    t0 = time.perf_counter()
    fitted = None
    if cfg.method == "kmeans":
        features = x
    else:
        fitted = fit(cfg, x, seed, progress=progress, checkpoint=checkpoint)
        features = fitted["code"]
    # k-means seed: the authors fix random_state=0; the spectra baseline varies it per seed.
    km_seed = cfg.kmeans_seed + (seed if cfg.method == "kmeans" else 0)
    labels = kmeans(features, scene.n_classes, seed=km_seed).reshape(scene.gt.shape)
    elapsed = time.perf_counter() - t0
    labeled = scene.gt > 0
    scores = clustering_scores(scene.gt[labeled], labels[labeled])
    if fitted is not None and fitted["prior_time"] > 0:   # resumed: the earlier runs' time counts their
        elapsed += fitted["prior_time"] - fitted["setup_time"]   # set-up once, not this one's again
    scores["time"] = elapsed
    scores["seed"] = seed
    if fitted is not None:
        scores["final_loss"] = float(fitted["losses"][-1])
        scores["best_loss"] = float(fitted["losses"].min())
    return {"labels": labels, "scores": scores, "fitted": fitted}


def run(scene: Scene, cfg, seeds, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """All seeds; with ``out_dir`` writes metrics.json, labels per seed (.npy, and .tif when the
    input was a GeoTIFF), the class-map PNG of the first seed, and for a trained model, per seed, the
    features k-means clustered (``features_seed<N>.npy``, H x W x C), the loss curve and a checkpoint, written
    during training too: a rerun into the same directory resumes where an interrupted one stopped
    (seeds already trained are not trained again). The directory's ``run.json`` names its run
    (:func:`run_identity`); a run of other settings or another scene into it is refused."""
    validate(scene, n_clusters=scene.n_classes)
    runs, first = [], None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        identity = run_identity(scene, cfg)
        _claim(out, identity)
    for seed in seeds:
        ckpt = out / f"checkpoint_seed{seed}" if out is not None else None   # used only by trained models
        r = cluster_once(scene, cfg, seed, progress=progress, checkpoint=ckpt)
        runs.append(r["scores"])
        first = first or r
        if out is not None:
            _write_seed(out, scene, seed, r)
    summary = {"dataset": scene.name, "method": cfg.method, "seeds": list(seeds),
               "config": cfg.to_dict(), "class_names": scene.class_names,
               "summary": summarize(runs), "runs": runs}
    if out is not None:
        from rsjax.train.checkpoint import write_json_atomic
        write_json_atomic(out / "metrics.json", summary, default=_jsonable)
        write_json_atomic(out / RUN_FILE, identity)
        from rsjax.plots.hsi import class_map_figure
        class_map_figure(scene.gt, first["labels"], scene.class_names, out / "class_map.png",
                         title=f"{scene.name}: {cfg.method} (seed {seeds[0]}, OA {first['scores']['OA']:.1f}%)")
    return summary


RUN_FILE = "run.json"   # in an output folder: the run it holds (run_identity)


def run_identity(scene: Scene, cfg) -> dict:
    """What makes two runs into one output folder the same run: the scene (its name and the sha1 of
    its cube and ground truth), the method and the settings that act for it. The seeds may differ:
    more seeds add to the run."""
    digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
    return {"dataset": scene.name, "cube_sha1": digest(scene.cube), "gt_sha1": digest(scene.gt),
            "settings": {**training_settings(cfg), "kmeans_seed": int(cfg.kmeans_seed)}}


def _claim(out: Path, identity: dict) -> None:
    """Make ``out`` this run's folder: refuse, naming the differences, when it holds another run
    (whose files and checkpoints would be mixed with, or replaced by, this one's)."""
    from rsjax.train.checkpoint import write_json_atomic
    path = out / RUN_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        stored = json.loads(path.read_text()) if path.exists() else None
    except OSError as e:
        raise DataError(f"--out {out}: cannot use it as the output folder ({type(e).__name__}: {e}); "
                        "pass a folder you can write to.") from e
    except ValueError as e:
        raise DataError(f"{path} is damaged ({e}); delete it if the folder holds this run, or pass another "
                        "--out.") from e
    if stored is not None and (diffs := differences(stored, identity)):
        raise DataError(f"{out} holds a run of other settings or data ({'; '.join(diffs)}): writing into it "
                        "would mix the two. Pass another --out, or delete that folder to start afresh.")
    if stored is None and (any(out.glob("checkpoint_seed*.json")) or (out / "metrics.json").exists()):
        return   # files of a run made before run.json existed: the seeds' own checks come first; run() stamps it
    try:
        write_json_atomic(path, identity)   # also a check, before any training, that the folder takes files
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({type(e).__name__}: {e}); pass a folder you can "
                        "write to.") from e


def _write_seed(out: Path, scene: Scene, seed: int, r: dict) -> None:
    np.save(out / f"labels_seed{seed}.npy", r["labels"].astype(np.int16))
    if scene.georef is not None:
        _write_geotiff(out / f"labels_seed{seed}.tif", r["labels"], scene.georef)
    if r["fitted"] is not None:      # its checkpoint_seed<seed>/ was written by training
        np.save(out / f"losses_seed{seed}.npy", r["fitted"]["losses"])
        # the learned representation k-means clustered (MS2A-Net's M', the AE/CAE latent), H x W x C
        np.save(out / f"features_seed{seed}.npy", np.asarray(r["fitted"]["code"], np.float32))


def _write_geotiff(path: Path, labels: np.ndarray, profile: dict) -> None:
    import rasterio
    meta = {k: v for k, v in profile.items() if k in ("crs", "transform", "width", "height")}
    meta.update(driver="GTiff", count=1, dtype="int16")
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(labels.astype(np.int16)[None])


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    return str(o)


def format_table(summary: dict) -> str:
    """The metrics table printed by ``rsjax cluster``: mean +/- std over seeds and per-class accuracy."""
    s, names, cfg, method = summary["summary"], summary["class_names"], summary["config"], summary["method"]
    setting = ("" if method == "kmeans" else f" | {cfg['iters']} iterations"
               + (f", lambda {cfg['lam']}, {cfg['ablation']}" if method == "ms2anet" else ""))
    w = max(28, 6 + max(len(n) for n in names))
    lines = [f"{summary['dataset']} | {method} | seeds {summary['seeds']}{setting}",
             f"{'metric':<{w}}{'mean':>10}{'std':>10}"]
    for k in ("OA", "AA", "Kappa", "NMI", "ARI", "time"):
        lines.append(f"{k:<{w}}{s[k]['mean']:>10.4g}{s[k]['std']:>10.3g}")
    for c, name in enumerate(names, start=1):
        vals = np.array([r["per_class"][c] for r in summary["runs"]])
        lines.append(f"{'  ' + str(c) + ' ' + name:<{w}}{vals.mean():>10.4g}{vals.std():>10.3g}")
    return "\n".join(lines)
