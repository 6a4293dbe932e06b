"""Shared plotting helpers: a categorical palette and figure saving (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1]: tab10, tab20, then tab20 + tab20b + tab20c up to 60
    (neighbouring hues of an hsv wheel are hard to tell apart), hsv beyond."""
    if n <= 10:
        return np.asarray(plt.get_cmap("tab10").colors)[:n]
    if n <= 60:
        return np.concatenate([plt.get_cmap(m).colors for m in ("tab20", "tab20b", "tab20c")])[:n]
    return plt.get_cmap("hsv")(np.linspace(0, 1, n, endpoint=False))[:, :3]


def savefig(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
