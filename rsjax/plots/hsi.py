"""Class maps for hyperspectral clustering: ground truth and clustering side by side, one palette."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from rsjax.metrics.clustering import hungarian_mapping
from rsjax.plots.common import palette, plt, savefig


def matched_map(gt: np.ndarray, clusters: np.ndarray, n_classes: int) -> np.ndarray:
    """``clusters`` relabelled for display: a cluster the Hungarian assignment over labeled
    pixels (``gt > 0``) matched to class k shows as k; every other cluster (left unmatched, or
    lying only on unlabeled pixels) gets its own id after the classes, ``n_classes + 1, ...``."""
    labeled = gt > 0
    mapping = hungarian_mapping(gt[labeled], clusters[labeled]) if labeled.any() else {}
    extra = itertools.count(n_classes + 1)
    to_class = {k: (v if v > 0 else next(extra)) for k, v in mapping.items()}
    for k in np.unique(clusters).tolist():              # clusters with no labeled pixel
        if k not in to_class:
            to_class[k] = next(extra)
    return np.vectorize(to_class.get, otypes=[np.int64])(clusters)


def class_map_figure(gt: np.ndarray, clusters: np.ndarray, class_names: list[str], path: str | Path,
                     title: str = "") -> Path:
    """Ground truth (0 = unlabeled, black) beside the cluster map, whose clusters take the colour
    of the class the Hungarian assignment (over labeled pixels) matched them to; clusters left
    unmatched get extra colours. A legend names the classes."""
    c = len(class_names)
    matched = matched_map(gt, clusters, c)
    colours = np.vstack([[0, 0, 0], palette(max(int(matched.max()), c))])
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.5))
    for ax, img, name in ((axes[0], gt, "ground truth"), (axes[1], matched, "clustering (matched)")):
        ax.imshow(colours[img], interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    handles = [Patch(color=colours[i + 1], label=f"{i + 1} {n}") for i, n in enumerate(class_names)]
    handles.insert(0, Patch(color="black", label="0 unlabeled"))
    if matched.max() > c:
        handles.append(Patch(color=colours[c + 1], label="unmatched cluster(s)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(bottom=0.18)
    return savefig(fig, path)
