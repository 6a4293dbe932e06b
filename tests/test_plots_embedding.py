"""Smoke tests: every embedding figure writes a PNG from tiny inputs."""
import warnings

import numpy as np
import pytest
from PIL import Image

from rsjax.plots.embedding import (learning_curves_figure, pr_curves_figure, retrieval_figure,
                                   similarity_matrix_figure, tsne_figure)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 5)
    emb = np.eye(3)[y] + 0.2 * rng.normal(size=(15, 3))
    images = rng.integers(0, 256, (15, 8, 8, 3), dtype=np.uint8)
    return emb, y, images


def _is_png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 50


def test_tsne(tmp_path, toy):
    emb, y, _ = toy
    out = tsne_figure(emb, y, tmp_path / "sub" / "tsne.png", class_names=["a", "b", "c"])
    assert out == tmp_path / "sub" / "tsne.png"
    _is_png(out)


def test_similarity_matrix(tmp_path, toy):
    emb, y, _ = toy
    _is_png(similarity_matrix_figure(emb, y[::-1].copy(), tmp_path / "sim.png"))


def test_pr_curves(tmp_path):
    rec = np.linspace(0, 1, 11)
    curves = {"SNCA-CE": {"pr_curve": {"recall": rec.tolist(), "precision": (1 - 0.3 * rec).tolist()}},
              "CE": {"recall": rec, "precision": 1 - 0.5 * rec},
              "Triplet": (rec, 1 - 0.6 * rec)}
    _is_png(pr_curves_figure(curves, tmp_path / "pr.png"))


def test_learning_curves(tmp_path):
    _is_png(learning_curves_figure({"MB": [40.0, 55.0, 61.0], "MU": ([1, 2, 4], [38.0, 50.0, 66.0])},
                                   tmp_path / "lc.png"))
    _is_png(learning_curves_figure([10.0, 20.0], tmp_path / "lc1.png"))


def test_retrieval(tmp_path, toy):
    emb, y, images = toy
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # e.g. a missing glyph for the marks
        out = retrieval_figure(images[:4], emb[:4], y[:4], images, emb, y, tmp_path / "ret.png", k=3,
                               class_names=["a", "b", "c"], n_queries=2)
    _is_png(out)
    _is_png(retrieval_figure(images / 255.0, emb, y, images, emb, y, tmp_path / "ret2.png", k=2, query_idx=[0, 7],
                             exclude_self=True))


@pytest.mark.parametrize("n", [3, 12, 21, 45])
def test_palette_colours_are_distinct(n):
    from rsjax.plots.common import palette
    colours = palette(n)
    assert colours.shape == (n, 3) and len({tuple(np.round(c, 4)) for c in colours}) == n
