"""Clustering metrics on the host: Hungarian-matched OA, AA, Kappa and per-class accuracy, NMI, ARI.

Shared by the hyperspectral clustering (labeled pixels only) and by the scene-embedding
k-means evaluation (ACC = the Hungarian OA).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, cohen_kappa_score, normalized_mutual_info_score


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes, ti = np.unique(y_true, return_inverse=True)
    clusters, pi = np.unique(y_pred, return_inverse=True)
    table = np.zeros((classes.size, clusters.size), np.int64)
    np.add.at(table, (ti, pi), 1)
    return table, classes, clusters


def hungarian_mapping(y_true: np.ndarray, y_pred: np.ndarray) -> dict[int, int]:
    """Cluster id -> class id maximising the matched pixels (one cluster per class).
    Clusters left without a class (more clusters than classes) map to -1."""
    table, classes, clusters = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    mapping = {int(c): -1 for c in clusters}
    mapping.update({int(clusters[c]): int(classes[r]) for r, c in zip(rows, cols)})
    return mapping


def match_labels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``y_pred`` relabelled into class ids through the Hungarian assignment."""
    mapping = hungarian_mapping(y_true, y_pred)
    return np.vectorize(mapping.get, otypes=[np.int64])(y_pred)


def clustering_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """OA, AA, Kappa, per-class accuracy (after Hungarian matching), NMI and ARI, in percent
    except NMI and ARI (in [0, 1] and [-1, 1] as usual). Every value of ``y_true`` is a class,
    0 included: pass the labeled pixels only (``y_true[gt > 0]``, as :func:`rsjax.cluster.run` does)."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need two non-empty label vectors of equal length, got {y_true.shape} and {y_pred.shape}")
    matched = match_labels(y_true, y_pred)
    classes = np.unique(y_true)
    per_class = np.array([np.mean(matched[y_true == c] == c) for c in classes])
    return {
        "OA": 100.0 * float(np.mean(matched == y_true)),
        "AA": 100.0 * float(per_class.mean()),
        "Kappa": 100.0 * float(cohen_kappa_score(y_true, matched)),
        "NMI": float(normalized_mutual_info_score(y_true, y_pred)),
        "ARI": float(adjusted_rand_score(y_true, y_pred)),
        "per_class": {int(c): 100.0 * float(a) for c, a in zip(classes, per_class)},
    }


def kmeans(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """scikit-learn KMeans (the authors' ``KMeans(n_clusters=k, random_state=0)`` with scikit-learn's former default n_init=10, which reproduces their k-means figures) on rows of ``features``."""
    features = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
    if k > features.shape[0]:
        raise ValueError(f"{k} clusters requested for {features.shape[0]} samples; ask for at most {features.shape[0]}.")
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(features)


def summarize(runs: list[dict], keys=("OA", "AA", "Kappa", "NMI", "ARI", "time")) -> dict:
    """Mean and (population) std over runs for each key; a std at float rounding level of the mean
    (equal values summed in another order) is reported as 0."""
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in runs if k in r], float)
        if vals.size:
            mean, std = float(vals.mean()), float(vals.std())
            out[k] = {"mean": mean, "std": std if std > 1e-12 * max(1.0, abs(mean)) else 0.0}
    return out
