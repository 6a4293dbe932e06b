"""Evaluation of scene embeddings on the host: kNN classification, k-means and retrieval.

The SNCA-CE protocol: a scikit-learn ``KNeighborsClassifier(weights='distance')`` fitted on the
train embeddings classifies the test embeddings (K = 1, 5, 10; overall accuracy and
class-wise F1); k-means on the test embeddings gives NMI and ACC (the Hungarian-matched
accuracy of :func:`rsjax.metrics.clustering.clustering_scores`, its ``OA``); the test images
query the train archive by cosine similarity for the precision-recall curve and the
retrieval scores below.

Retrieval definitions (as in pytorch-metric-learning's ``AccuracyCalculator``; R = the number
of archive items of the query's class; ties in similarity are ranked by archive index):

* ``P@1``: fraction of queries whose nearest archive item has their class;
* ``Recall@k``: fraction of queries with at least one same-class item among the top k;
* ``R-precision``: precision among the top R;
* ``MAP@R``: mean over queries of ``(1/R) sum_{i<=R} P(i) rel(i)``;
* ``mAP``: mean over queries of the average precision over the whole ranking;
* PR curve: precision at recall levels (11 by default, 0, 0.1, ..., 1), averaged over
  queries; by default interpolated (the highest precision at any recall >= the level, as in
  TREC), else the precision at the rank where the recall first reaches the level.

Queries whose class has no item in the archive are left out of the retrieval scores
(``n_queries`` counts the ones used), as pytorch-metric-learning leaves out lone queries.
Functions return fractions in [0, 1]; :func:`evaluate_embeddings` reports percentages.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from rsjax.metrics.clustering import clustering_scores, kmeans

DEFAULT_RECALL_LEVELS = np.linspace(0.0, 1.0, 11)
KS = (1, 5, 10)   # the K of kNN classification and Recall@K (the paper's)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _check(emb: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(emb)
    y = np.asarray(y).ravel()
    if emb.ndim != 2 or emb.shape[0] != y.size or y.size == 0:
        raise ValueError(f"{what}: need (N, D) embeddings and N labels with N > 0, got {emb.shape} and {y.shape}")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    return emb, y


def _check_classes(y: np.ndarray, what: str, n_classes: int | None = None) -> None:
    """Labels that index the classes: integers 0 .. n_classes - 1."""
    if y.dtype.kind not in "iu" or y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        span = f"[{y.min()}, {y.max()}] " if y.dtype.kind in "iuf" else ""
        raise ValueError(f"{what}: labels must be class indices, integers 0 .. "
                         f"{'C - 1' if n_classes is None else n_classes - 1}; got {y.dtype} {span}(number the "
                         "classes from 0 in the order of the class names)")


# ----------------------------------------------------------------------------- kNN and k-means

def knn_scores(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
               ks: Sequence[int] = KS, n_classes: int | None = None) -> dict[int, dict]:
    """kNN classification of ``test_emb`` by scikit-learn's ``KNeighborsClassifier(n_neighbors=K,
    weights='distance')`` fitted on ``train_emb`` (Euclidean distance, as scikit-learn's default).

    Returns ``{K: {'oa': accuracy, 'f1': per-class F1 (n_classes,), 'f1_macro': mean F1 over the
    classes ``test_y`` holds, 'pred': predictions}}``, fractions in [0, 1]; a class absent from the
    test labels has F1 = 0 in ``f1`` (and no part in ``f1_macro``: a query set of some classes is
    scored on those).
    """
    from sklearn.metrics import f1_score
    from sklearn.neighbors import KNeighborsClassifier
    train_emb, train_y = _check(train_emb, train_y, "train")
    test_emb, test_y = _check(test_emb, test_y, "test")
    for y, what in ((train_y, "train"), (test_y, "test")):
        _check_classes(y, what, n_classes)
    if n_classes is None:
        n_classes = int(max(train_y.max(), test_y.max())) + 1
    out = {}
    for k in ks:
        if not 1 <= k <= train_y.size:
            raise ValueError(f"K = {k} neighbours requested from {train_y.size} training embeddings; pass ks "
                             f"of 1 .. {train_y.size} (e.g. ks=(1,)), or more training embeddings.")
        pred = KNeighborsClassifier(n_neighbors=int(k), weights="distance").fit(train_emb, train_y).predict(test_emb)
        f1 = f1_score(test_y, pred, labels=np.arange(n_classes), average=None, zero_division=0)
        out[int(k)] = {"oa": float(np.mean(pred == test_y)), "f1": np.asarray(f1, np.float64),
                       "f1_macro": float(np.mean(f1[np.unique(test_y)])), "pred": pred}
    return out


def kmeans_scores(emb: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> dict[str, float]:
    """k-means (``rsjax.metrics.clustering.kmeans``, k = ``n_classes``) on the embeddings, scored
    against ``y``: ``nmi``, ``acc`` (Hungarian-matched accuracy) and ``ari``, all in [0, 1]
    (ARI in [-1, 1])."""
    emb, y = _check(emb, y, "k-means")
    scores = clustering_scores(y, kmeans(emb, n_classes, seed=seed))
    return {"nmi": scores["NMI"], "acc": scores["OA"] / 100.0, "ari": scores["ARI"]}


# ----------------------------------------------------------------------------- retrieval

def nearest_neighbors(query_emb: np.ndarray, archive_emb: np.ndarray, k: int,
                      exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices (Q, k) of the ``k`` archive items most cosine-similar to each query, best first,
    and their similarities. ``exclude_self`` (query set = archive) skips each query itself."""
    q, a = l2_normalize(query_emb), l2_normalize(archive_emb)
    sims = q @ a.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def _relevance(query_emb, query_y, archive_emb, archive_y, exclude_self: bool, chunk: int) -> Iterable[np.ndarray]:
    """Chunks of the (queries, archive) relevance matrix, each row in ranking order."""
    q, a = l2_normalize(query_emb), l2_normalize(archive_emb)
    for start in range(0, q.shape[0], chunk):
        sims = q[start:start + chunk] @ a.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")
        if exclude_self:
            order = order[:, :-1]                     # the query itself ranks last
        yield archive_y[order] == query_y[start:start + chunk, None]


def retrieval_scores(query_emb: np.ndarray, query_y: np.ndarray, archive_emb: np.ndarray, archive_y: np.ndarray,
                     ks: Sequence[int] = KS, recall_levels: Sequence[float] | None = None,
                     interpolated: bool = True, exclude_self: bool = False, chunk: int = 1024) -> dict:
    """Cosine-similarity retrieval of the archive by each query (see the module docstring).

    Returns fractions: ``map``, ``map@r``, ``r_precision``, ``p@1``, ``recall@{k}`` for each k,
    ``pr_curve`` = ``{'recall': levels, 'precision': mean precision per level}``,
    ``n_queries`` (queries used) and ``n_skipped`` (queries with no same-class archive item).
    ``exclude_self`` is for a query set that is the archive (leave-one-out). Queries are
    processed ``chunk`` at a time to bound memory.
    """
    query_emb, query_y = _check(query_emb, query_y, "queries")
    archive_emb, archive_y = _check(archive_emb, archive_y, "archive")
    if exclude_self and query_y.size != archive_y.size:
        raise ValueError("exclude_self needs the queries to be the archive")
    levels = np.asarray(DEFAULT_RECALL_LEVELS if recall_levels is None else recall_levels, np.float64)
    if levels.ndim != 1 or np.any(levels < 0) or np.any(levels > 1):
        raise ValueError(f"recall levels must lie in [0, 1], got {levels}")
    m = archive_y.size - int(exclude_self)
    for k in ks:
        if not 1 <= k <= m:
            raise ValueError(f"Recall@{k} needs at least {k} archive items, there are {m}")
    sums = {"map": 0.0, "map@r": 0.0, "r_precision": 0.0, "p@1": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    pr_sum = np.zeros(levels.size)
    used = skipped = 0
    for rel in _relevance(query_emb, query_y, archive_emb, archive_y, exclude_self, chunk):
        r = rel.sum(axis=1)
        keep = r > 0
        skipped += int(np.sum(~keep))
        rel, r = rel[keep], r[keep]
        if rel.shape[0] == 0:
            continue
        used += rel.shape[0]
        rows = np.arange(rel.shape[0])
        ranks = np.arange(1, rel.shape[1] + 1)
        hits = np.cumsum(rel, axis=1)
        prec = hits / ranks
        sums["map"] += float(np.sum(np.sum(prec * rel, axis=1) / r))
        within_r = ranks[None, :] <= r[:, None]
        sums["map@r"] += float(np.sum(np.sum(prec * rel * within_r, axis=1) / r))
        sums["r_precision"] += float(np.sum(hits[rows, r - 1] / r))
        sums["p@1"] += float(np.sum(rel[:, 0]))
        for k in ks:
            sums[f"recall@{k}"] += float(np.sum(rel[:, :k].any(axis=1)))
        best_after = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1] if interpolated else None
        for li, level in enumerate(levels):
            # the j-th relevant item reaches recall >= level; ceil with a guard against 0.3 * 10 = 3.0000000000000004
            j = np.maximum(1, np.ceil(level * r - 1e-9)).astype(np.int64)
            pos = np.argmax(hits >= j[:, None], axis=1)
            pr_sum[li] += float(np.sum(best_after[rows, pos] if interpolated else j / (pos + 1)))
    if used == 0:
        out = {key: float("nan") for key in sums}
        curve = np.full(levels.size, np.nan)
    else:
        out = {key: v / used for key, v in sums.items()}
        curve = pr_sum / used
    out["pr_curve"] = {"recall": levels.tolist(), "precision": curve.tolist()}
    out["n_queries"], out["n_skipped"] = used, skipped
    return out


# ----------------------------------------------------------------------------- the SNCA-CE table

def evaluate_embeddings(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
                        n_classes: int, ks: Sequence[int] = KS, seed: int = 0, *,
                        class_names: Sequence[str] | None = None, normalize: bool = True,
                        recall_levels: Sequence[float] | None = None, threads: int | None = None) -> dict:
    """The SNCA-CE evaluation: kNN (train -> test), k-means on test, test-queries-train retrieval.

    Embeddings are L2-normalised first (``normalize``; the models' embeddings already are).
    ``threads`` caps scikit-learn's OpenMP threads (k-means, kNN) for the call; on a machine
    whose cores are busy (or shared with JAX's thread pool) 1 can be several times faster.
    Returns a flat, JSON-ready dict; every score is a percentage:

    * ``knn_oa@K``, ``knn_f1@K`` (macro F1) for each K in ``ks``;
    * ``kmeans_nmi``, ``kmeans_acc`` (k-means on the test embeddings, k = the classes among them);
    * ``map``, ``map@r``, ``r_precision``, ``p@1``, ``recall@K`` for each K;
    * ``n_train``, ``n_test``, ``n_queries`` (queries used by retrieval);
    * ``per_class_f1``: ``{str(K): {class name: F1 %}}`` over the classes ``test_y`` holds;
    * ``pr_curve``: ``{'recall': [...], 'precision': [...]}``, both in [0, 1].
    """
    train_emb, train_y = _check(train_emb, train_y, "train")
    test_emb, test_y = _check(test_emb, test_y, "test")
    for y, what in ((train_y, "train"), (test_y, "test")):
        _check_classes(y, what, n_classes)
    if normalize:
        train_emb, test_emb = l2_normalize(train_emb), l2_normalize(test_emb)
    names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    ks = tuple(int(k) for k in ks)
    out: dict = {}
    with threadpool_limits(limits=threads, user_api="openmp"):
        knn = knn_scores(train_emb, train_y, test_emb, test_y, ks=ks, n_classes=n_classes)
        km = kmeans_scores(test_emb, test_y, np.unique(test_y).size, seed=seed)   # k: the classes clustered
    for k in ks:
        out[f"knn_oa@{k}"] = 100.0 * knn[k]["oa"]
        out[f"knn_f1@{k}"] = 100.0 * knn[k]["f1_macro"]
    out["kmeans_nmi"], out["kmeans_acc"] = 100.0 * km["nmi"], 100.0 * km["acc"]
    ret = retrieval_scores(test_emb, test_y, train_emb, train_y, ks=ks, recall_levels=recall_levels)
    for key in ("map", "map@r", "r_precision", "p@1", *(f"recall@{k}" for k in ks)):
        out[key] = 100.0 * ret[key]
    out["n_train"], out["n_test"], out["n_queries"] = int(train_y.size), int(test_y.size), ret["n_queries"]
    present = set(np.unique(test_y).tolist())
    out["per_class_f1"] = {str(k): {n: 100.0 * float(f) for c, (n, f) in enumerate(zip(names, knn[k]["f1"]))
                                    if c in present} for k in ks}
    out["pr_curve"] = ret["pr_curve"]
    return out


def scalar_scores(results: dict) -> dict[str, float]:
    """The scalar entries of an :func:`evaluate_embeddings` result (the table row)."""
    return {k: v for k, v in results.items() if isinstance(v, (int, float, np.integer, np.floating))}


def format_table(results: dict, digits: int = 2) -> str:
    """A plain-text table of the scalar scores: one column for one result, or one column per
    method for ``{method: result}``."""
    if results and all(isinstance(v, dict) for v in results.values()):
        methods = {name: scalar_scores(r) for name, r in results.items()}
    else:
        methods = {"value": scalar_scores(results)}
    keys = list(dict.fromkeys(k for r in methods.values() for k in r))
    width = max(len(k) for k in keys) if keys else 6
    cols = [max(len(n), digits + 5) for n in methods]
    lines = ["metric".ljust(width) + "".join("  " + n.rjust(c) for n, c in zip(methods, cols))]
    for k in keys:
        cells = []
        for (n, r), c in zip(methods.items(), cols):
            v = r.get(k)
            txt = "-" if v is None else (str(int(v)) if isinstance(v, (int, np.integer)) else f"{v:.{digits}f}")
            cells.append("  " + txt.rjust(c))
        lines.append(k.ljust(width) + "".join(cells))
    return "\n".join(lines)
