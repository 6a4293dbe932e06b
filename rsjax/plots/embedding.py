"""Figures for scene embeddings: t-SNE, class-ordered similarity matrix, PR curves, learning
curves and retrieval examples. Each function writes one PNG (matplotlib, Agg backend) and
returns its path; colours and saving come from :mod:`rsjax.plots.common`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rsjax.metrics.retrieval import l2_normalize, nearest_neighbors
from rsjax.plots.common import palette, plt, savefig


def _names(labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    n = int(labels.max()) + 1 if labels.size else 0
    if class_names is None:
        return [str(c) for c in range(n)]
    if len(class_names) < n:
        raise ValueError(f"{len(class_names)} class names for labels up to {n - 1}")
    return [str(c) for c in class_names]


def _legend_outside(ax, handles, fontsize: float = 7):
    ncol = 1 + len(handles) // 25
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize,
              ncol=ncol, frameon=False, handletextpad=0.3, borderaxespad=0.0)


def tsne_figure(emb: np.ndarray, labels: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None,
                seed: int = 0, perplexity: float = 30.0, title: str = "", threads: int | None = 1) -> Path:
    """2-D t-SNE (scikit-learn, PCA initialisation, fixed seed) of L2-normalised embeddings,
    points coloured by class, with a legend naming the classes. The perplexity is lowered for
    small sets (it must stay below the number of points).

    ``threads`` caps the OpenMP threads of scikit-learn's Barnes-Hut gradient (None: no cap).
    The default of 1 is deliberate: next to JAX's own thread pool on a busy machine the
    OpenMP workers spin and a 15-point t-SNE took 40 s instead of 0.1 s.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    emb = l2_normalize(np.asarray(emb))
    labels = np.asarray(labels).ravel()
    if emb.shape[0] != labels.size or emb.shape[0] < 3:
        raise ValueError(f"need at least 3 embeddings with one label each, got {emb.shape} and {labels.shape}")
    names = _names(labels, class_names)
    perp = float(min(perplexity, max(1.0, (emb.shape[0] - 1) / 3.0)))
    with threadpool_limits(limits=threads, user_api="openmp"):
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(emb)
    colours = palette(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    present = np.unique(labels)
    for c in present:
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=float(np.clip(4000 / emb.shape[0], 4, 20)), color=colours[c], linewidths=0)
    _legend_outside(ax, [Line2D([], [], marker="o", ls="", color=colours[c], label=names[c]) for c in present])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {emb.shape[0]} embeddings")
    return savefig(fig, path)


def similarity_matrix_figure(emb: np.ndarray, labels: np.ndarray, path: str | Path,
                             class_names: Sequence[str] | None = None, title: str = "") -> Path:
    """Cosine-similarity matrix of the embeddings with rows and columns ordered by class (stable
    within a class), class boundaries drawn and class names at the block centres."""
    emb = l2_normalize(np.asarray(emb))
    labels = np.asarray(labels).ravel()
    names = _names(labels, class_names)
    order = np.argsort(labels, kind="stable")
    sims = emb[order] @ emb[order].T
    sorted_y = labels[order]
    classes, starts, counts = np.unique(sorted_y, return_index=True, return_counts=True)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(sims, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="white", lw=0.5)
        ax.axvline(s - 0.5, color="white", lw=0.5)
    centres = starts + counts / 2 - 0.5
    if classes.size <= 50:
        fs = 8 if classes.size <= 20 else 5
        ax.set_xticks(centres, [names[c] for c in classes], rotation=90, fontsize=fs)
        ax.set_yticks(centres, [names[c] for c in classes], fontsize=fs)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title or "cosine similarity, ordered by class")
    return savefig(fig, path)


def _curve(value) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, Mapping):
        value = value.get("pr_curve", value)
        return np.asarray(value["recall"], float), np.asarray(value["precision"], float)
    recall, precision = value
    return np.asarray(recall, float), np.asarray(precision, float)


def pr_curves_figure(curves: Mapping[str, object], path: str | Path, title: str = "") -> Path:
    """Precision-recall curves of several methods on one plot.

    ``curves`` maps a method name to an :func:`rsjax.metrics.retrieval.evaluate_embeddings`
    result, a ``{'recall': ..., 'precision': ...}`` dict, or a ``(recall, precision)`` pair
    (both in [0, 1]).
    """
    if not curves:
        raise ValueError("no curves to plot")
    colours = palette(len(curves))
    markers = "osD^v<>ph*"
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, (name, value) in enumerate(curves.items()):
        r, p = _curve(value)
        ax.plot(r, p, marker=markers[i % len(markers)], ms=4, lw=1.5, color=colours[i], label=str(name))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "precision-recall (test queries, train archive)")
    return savefig(fig, path)


def learning_curves_figure(histories: Mapping[str, object] | Sequence[float], path: str | Path,
                           ylabel: str = "val kNN accuracy (%)", title: str = "") -> Path:
    """Learning curves: one line per run. ``histories`` maps a run name to a sequence of values
    per epoch (epochs 1, 2, ...) or to an ``(epochs, values)`` pair; a bare sequence is one run."""
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    if not histories:
        raise ValueError("no learning curves to plot")
    colours = palette(len(histories))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, h) in enumerate(histories.items()):
        if isinstance(h, tuple) and len(h) == 2 and np.ndim(h[0]) == 1:
            x, y = np.asarray(h[0], float), np.asarray(h[1], float)
        else:
            y = np.asarray(h, float)
            x = np.arange(1, y.size + 1)
        ax.plot(x, y, marker="o" if y.size <= 30 else None, ms=3, color=colours[i], label=str(name) or None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(str(n) for n in histories):
        ax.legend(fontsize=8)
    ax.set_title(title or "learning curves")
    return savefig(fig, path)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def retrieval_figure(query_images: np.ndarray, query_emb: np.ndarray, query_y: np.ndarray,
                     archive_images: np.ndarray, archive_emb: np.ndarray, archive_y: np.ndarray,
                     path: str | Path, k: int = 5, class_names: Sequence[str] | None = None,
                     query_idx: Sequence[int] | None = None, n_queries: int = 4, seed: int = 0,
                     exclude_self: bool = False) -> Path:
    """Retrieval examples: each row shows a query image and its ``k`` most cosine-similar archive
    images, titled with their class names; correct ones (query's class) framed green with a
    check mark, wrong ones red with a cross. Images are uint8 or float in [0, 1] (HWC).
    Queries are ``query_idx`` or ``n_queries`` drawn with ``seed``; ``exclude_self`` (the
    queries are the archive) keeps each query out of its own results."""
    query_y = np.asarray(query_y).ravel()
    archive_y = np.asarray(archive_y).ravel()
    names = _names(np.concatenate([query_y, archive_y]), class_names)
    if query_idx is None:
        n = min(n_queries, query_y.size)
        query_idx = np.sort(np.random.default_rng(seed).choice(query_y.size, n, replace=False))
    query_idx = np.asarray(query_idx, int)
    k = min(k, archive_y.size - int(exclude_self))
    nn, sims = nearest_neighbors(np.asarray(query_emb)[query_idx], archive_emb, k + int(exclude_self))
    if exclude_self:
        keep = nn != query_idx[:, None]
        keep[keep.all(axis=1), -1] = False           # the query was not among its own top k + 1
        nn, sims = nn[keep].reshape(len(query_idx), k), sims[keep].reshape(len(query_idx), k)
    fig, axes = plt.subplots(len(query_idx), k + 1, figsize=(1.6 * (k + 1), 1.8 * len(query_idx)), squeeze=False)
    for row, qi in enumerate(query_idx):
        ax = axes[row, 0]
        ax.imshow(_as_rgb(query_images[qi]))
        ax.set_title(f"query\n{names[query_y[qi]]}", fontsize=7, fontweight="bold")
        for sp in ax.spines.values():
            sp.set_edgecolor("black")
            sp.set_linewidth(2)
        for col in range(k):
            j = nn[row, col]
            ok = archive_y[j] == query_y[qi]
            colour = "tab:green" if ok else "tab:red"
            ax = axes[row, col + 1]
            ax.imshow(_as_rgb(archive_images[j]))
            ax.set_title(f"{'✓' if ok else '✗'} {names[archive_y[j]]}\n{sims[row, col]:.2f}", fontsize=7, color=colour)
            for sp in ax.spines.values():
                sp.set_edgecolor(colour)
                sp.set_linewidth(3)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"top-{k} retrieval (cosine similarity)", fontsize=9)
    return savefig(fig, path)
