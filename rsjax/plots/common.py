"""Shared plotting helpers: a categorical palette and figure saving (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1] (tab20, then hsv beyond 20)."""
    if n <= 20:
        return np.asarray(plt.get_cmap("tab20").colors)[:n] if n > 10 else np.asarray(plt.get_cmap("tab10").colors)[:n]
    return plt.get_cmap("hsv")(np.linspace(0, 1, n, endpoint=False))[:, :3]


def savefig(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
