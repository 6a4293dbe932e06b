"""Errors the other test files do not raise: each is raised, with the fixed part of its message (the
problem and, where there is one, the fix)."""
import argparse

import numpy as np
import pytest

from rsjax.data.paths import DataError

E = np.eye(4, dtype=np.float32)            # four unit embeddings of classes 0..3
Y = np.arange(4)


def _clustering_empty():
    from rsjax.metrics.clustering import clustering_scores
    clustering_scores(np.array([]), np.array([]))


def _knn_too_many():
    from rsjax.metrics.retrieval import knn_scores
    knn_scores(E, Y, E, Y, ks=(5,), n_classes=4)


def _exclude_self():
    from rsjax.metrics.retrieval import retrieval_scores
    retrieval_scores(E[:3], Y[:3], E, Y, exclude_self=True)


def _evaluate_names():
    from rsjax.metrics.retrieval import evaluate_embeddings
    evaluate_embeddings(E, Y, E, Y, 4, ks=(1,), class_names=["a", "b"])


def _bank_schedule():
    from rsjax.bank import bank_momentum
    bank_momentum(3, 0.5, (80, 120), (0.8,))


def _shard_batch():
    from rsjax import parallel
    parallel.shard_batch(parallel.make_mesh(1), np.zeros(()))


def _train_batches():
    from rsjax.data.scenes import train_batches
    next(train_batches(10, 0, 0, 0))


def _split_too_few():
    from rsjax.data.scenes import stratified_split
    stratified_split(np.zeros(2, int), 0, fractions=(0.1, 0.45, 0.45))


def _files_per_image():
    from rsjax.data.scenes import SceneImages
    SceneImages(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, int), ["a"], ["one.png"])


def _no_folder(tmp_path):
    from rsjax.data.scenes import load_folder
    load_folder(tmp_path / "missing")


def _no_npz(tmp_path):
    from rsjax.data.scenes import load_npz
    load_npz(tmp_path / "missing.npz")


def _no_cube(tmp_path):
    from rsjax.data.hsi import load_scene
    load_scene(None, tmp_path / "missing.npy", tmp_path / "gt.npy")


def _conv_channels():
    import jax.numpy as jnp
    from rsjax.models.layers import conv_same_cnhw
    conv_same_cnhw(jnp.zeros((3, 1, 5, 5)), jnp.zeros((3, 3, 4, 2)))


def _conv_layout():
    import jax
    import jax.numpy as jnp
    from rsjax.models.layers import Conv
    Conv(2, 3, layout="NCHW").init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))


def _no_weights(tmp_path):
    from rsjax.models.convert import load_torch_state_dict
    load_torch_state_dict(tmp_path / "missing.pth")


def _plot_names(tmp_path):
    from rsjax.plots.embedding import similarity_matrix_figure
    similarity_matrix_figure(E, Y, tmp_path / "s.png", class_names=["a"])


def _tsne_few(tmp_path):
    from rsjax.plots.embedding import tsne_figure
    tsne_figure(E[:2], Y[:2], tmp_path / "t.png")


def _no_curves(tmp_path):
    from rsjax.plots.embedding import pr_curves_figure
    pr_curves_figure({}, tmp_path / "p.png")


def _no_learning_curves(tmp_path):
    from rsjax.plots.embedding import learning_curves_figure
    learning_curves_figure({}, tmp_path / "l.png")


def _seeds_text():
    from rsjax.cli import _seeds
    _seeds("three")


CASES = [
    (_clustering_empty, ValueError, r"need two non-empty label vectors of equal length"),
    (_knn_too_many, ValueError, r"K = 5 neighbours requested from 4 training embeddings; pass ks of 1 \.\. 4"),
    (_exclude_self, ValueError, r"exclude_self needs the queries to be the archive"),
    (_evaluate_names, ValueError, r"2 class names for 4 classes"),
    (_bank_schedule, ValueError, r"bank momentum schedule: 2 boundaries but 1 values"),
    (_shard_batch, ValueError, r"a batch of \(\) does not split over 1 devices; use a batch size divisible by 1"),
    (_train_batches, ValueError, r"batch_size must be positive, got 0"),
    (_split_too_few, DataError, r"2 samples are too few for the fractions \(0\.1, 0\.45, 0\.45\)"),
    (_files_per_image, DataError, r"1 file names for 2 images"),
    (_no_folder, DataError, r"missing: no such folder; pass a folder whose sub-folders are the classes"),
    (_no_npz, DataError, r"missing\.npz: no such file; check the path"),
    (_no_cube, DataError, r"missing\.npy: no such file; check the path"),
    (_conv_channels, ValueError, r"input has 3 channels, kernel expects 4"),
    (_conv_layout, ValueError, r"layout must be 'NHWC' or 'CNHW', got 'NCHW'"),
    (_no_weights, FileNotFoundError, r"missing\.pth: no such weights file"),
    (_plot_names, ValueError, r"1 class names for labels up to 3"),
    (_tsne_few, ValueError, r"need at least 3 embeddings with one label each"),
    (_no_curves, ValueError, r"no curves to plot"),
    (_no_learning_curves, ValueError, r"no learning curves to plot"),
    (_seeds_text, argparse.ArgumentTypeError, r"takes a count \(5\) or a list \(0,3,7\), got 'three'"),
]


@pytest.mark.parametrize("call,error,says", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_error_names_the_problem(call, error, says, tmp_path):
    with pytest.raises(error, match=says):
        call(tmp_path) if call.__code__.co_argcount else call()
