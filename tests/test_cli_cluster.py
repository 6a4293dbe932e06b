"""``rsjax cluster`` end to end on tiny inputs: table, files, errors."""
import json

import numpy as np
import pytest
import scipy.io

from rsjax.cli import main


def _write_scene(tmp_path, h=9, w=8, d=5):
    rng = np.random.default_rng(0)
    gt = np.repeat(np.arange(1, 4), h * w // 3 + 1)[: h * w].reshape(h, w)
    cube = (rng.normal(size=(h, w, d)) + gt[..., None] * 3).astype(np.float32)
    scipy.io.savemat(tmp_path / "cube.mat", {"cube": cube})
    np.save(tmp_path / "gt.npy", gt)
    return tmp_path / "cube.mat", tmp_path / "gt.npy"


@pytest.mark.parametrize("method", ["kmeans", "ms2anet"])
def test_cluster_writes_table_and_files(tmp_path, capsys, method):
    cube, gt = _write_scene(tmp_path)
    out = tmp_path / "out"
    rc = main(["cluster", "--cube", str(cube), "--gt", str(gt), "--method", method, "--iters", "4",
               "--seeds", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "OA" in text and "Kappa" in text and "class 3" in text
    assert ("| 4 iterations, lambda 0.1, A3" in text) == (method == "ms2anet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and len(metrics["runs"]) == 2
    assert 0 <= metrics["summary"]["OA"]["mean"] <= 100
    if method == "kmeans":                               # three classes 3 std apart in every band
        assert metrics["summary"]["OA"]["mean"] > 90
    labels = np.load(out / "labels_seed1.npy")
    truth = np.load(gt)
    assert labels.shape == (9, 8)
    from rsjax.metrics.clustering import clustering_scores
    assert clustering_scores(truth[truth > 0], labels[truth > 0])["OA"] == pytest.approx(metrics["runs"][1]["OA"])
    assert (out / "class_map.png").stat().st_size > 1000
    assert (out / "checkpoint_seed0").is_dir() == (method == "ms2anet")
    if method == "ms2anet":          # the file holds what k-means clustered: clustering it again gives the labels
        from rsjax.metrics.clustering import kmeans
        features = np.load(out / "features_seed1.npy")
        assert features.shape == (9, 8, 36) and features.dtype == np.float32
        np.testing.assert_array_equal(kmeans(features.reshape(72, 36), 3, seed=0).reshape(9, 8), labels)
    else:                            # k-means clusters the scaled spectra themselves
        assert not list(out.glob("features_seed*"))


def test_checkpoint_restores_the_trained_state(tmp_path):
    from rsjax.train.checkpoint import restore
    cube, gt = _write_scene(tmp_path)
    assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--iters", "3", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    state = restore(tmp_path / "o" / "checkpoint_seed0")
    assert int(state["step"]) == 3
    assert "spatial" in state["best_params"]


def test_bfloat16_run_keeps_float32_parameters(tmp_path):
    import jax
    import jax.numpy as jnp
    from rsjax.train.checkpoint import restore
    cube, gt = _write_scene(tmp_path)
    assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--iters", "3", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    state = restore(tmp_path / "o" / "checkpoint_seed0")
    assert {leaf.dtype for leaf in jax.tree.leaves(state["best_params"])} == {jnp.dtype(jnp.float32)}
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert 0 <= metrics["summary"]["OA"]["mean"] <= 100


def test_geotiff_input_gives_geotiff_labels(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    cube_mat, gt = _write_scene(tmp_path)
    cube = scipy.io.loadmat(cube_mat)["cube"]
    transform = from_origin(10, 20, 1, 1)
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", width=8, height=9, count=5, dtype="float32",
                       crs="EPSG:4326", transform=transform) as dst:
        dst.write(np.moveaxis(cube, -1, 0))
    assert main(["cluster", "--cube", str(tmp_path / "c.tif"), "--gt", str(gt), "--method", "kmeans",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    with rasterio.open(tmp_path / "o" / "labels_seed0.tif") as src:
        assert src.transform == transform and src.crs.to_string() == "EPSG:4326"
        np.testing.assert_array_equal(src.read(1), np.load(tmp_path / "o" / "labels_seed0.npy"))


def test_bad_input_exits_with_a_clear_message(tmp_path, capsys):
    cube, _ = _write_scene(tmp_path)
    np.save(tmp_path / "gt_bad.npy", np.ones((3, 3)))
    assert main(["cluster", "--cube", str(cube), "--gt", str(tmp_path / "gt_bad.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and f"{cube} (ground truth {tmp_path / 'gt_bad.npy'})" in err
    assert main(["cluster", "--dataset", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "samson", "--cube", str(cube), "--gt", str(cube)]) == 2
    assert "pass either --dataset or --cube/--gt, not both" in capsys.readouterr().err
    capsys.readouterr()
    for argv, says in ((["--seeds", "0"], "a count of 1 or more"), (["--seeds", ","], "a count of 1 or more"),
                       (["--seeds", "0,0"], "distinct seeds"), (["--seeds=-1,2"], "distinct seeds of 0 or more"),
                       (["--lr", "0"], "--lr: must be a positive number"), (["--lambda", "-1"], "--lambda: must be"),
                       (["--iters", "0"], "--iters: must be a positive integer"),
                       (["--dtype", "float16"], "invalid choice: 'float16'")):
        with pytest.raises(SystemExit):
            main(["cluster", *argv])
        assert says in capsys.readouterr().err, argv


def test_training_that_diverges_exits_with_its_message(tmp_path, capsys, monkeypatch):
    """A NaN loss in the second chunk of 50 iterations, at its second iteration: iteration 51."""
    from rsjax.train import hsi
    real, calls = hsi._train_chunk, []

    def diverges(*a, **kw):
        state, losses = real(*a, **kw)
        calls.append(1)
        return state, (losses.at[1].set(np.nan) if len(calls) == 2 else losses)

    monkeypatch.setattr(hsi, "_train_chunk", diverges)
    cube, gt = _write_scene(tmp_path)
    assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--iters", "100", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "rsjax: error: non-finite loss at iteration 51; lower the learning rate" in capsys.readouterr().err


def test_class_names_of_own_files(tmp_path, capsys):
    cube, gt = _write_scene(tmp_path)
    own = ["--cube", str(cube), "--gt", str(gt), "--method", "kmeans", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(["cluster", *own, "--class-names", "water, forest,field"]) == 0
    assert "forest" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["class_names"] == ["water", "forest", "field"]
    assert main(["cluster", *own, "--class-names", "water,forest"]) == 2
    assert "3 labels (1, 2, 3) but 2 class names" in capsys.readouterr().err
    assert main(["cluster", "--class-names", "a,b"]) == 2
    assert "registered scenes have theirs" in capsys.readouterr().err


def test_default_output_folder_is_per_scene_and_method(tmp_path, capsys, monkeypatch):
    cube, gt = _write_scene(tmp_path)
    monkeypatch.chdir(tmp_path)
    for method in ("kmeans", "ae"):
        assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--method", method, "--iters", "2", "--quiet"]) == 0
        assert f"wrote rsjax_out/cube_{method}/" in capsys.readouterr().out
    for method in ("kmeans", "ae"):                        # the second run did not overwrite the first
        assert json.loads((tmp_path / "rsjax_out" / f"cube_{method}" / "metrics.json").read_text())["method"] == method


def test_python_m_rsjax_is_the_command_line_and_reports_the_version():
    """``python -m rsjax`` runs the same parser as the ``rsjax`` entry point; ``--version`` gives
    the installed distribution's version (setup.cfg's)."""
    import configparser
    import subprocess
    import sys
    from pathlib import Path
    version = configparser.ConfigParser()
    version.read(Path(__file__).parents[1] / "setup.cfg")
    done = subprocess.run([sys.executable, "-m", "rsjax", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"rsjax {version['metadata']['version']}"
    done = subprocess.run([sys.executable, "-m", "rsjax", "cluster", "--no-such-flag"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unrecognized arguments: --no-such-flag" in done.stderr


def test_json_summary_a_trailing_comma_seed_and_the_a1_ablation(tmp_path, capsys):
    """--json prints the summary as JSON; --seeds "3," is seed 3 alone; --ablation A1 clusters SAF (3 channels)."""
    cube, gt = _write_scene(tmp_path)
    assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--method", "kmeans", "--seeds", "3,", "--json",
                 "--out", str(tmp_path / "k"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"OA", "AA", "Kappa", "NMI", "ARI"} and summary["OA"]["std"] == 0.0
    assert json.loads((tmp_path / "k" / "metrics.json").read_text())["seeds"] == [3]
    assert main(["cluster", "--cube", str(cube), "--gt", str(gt), "--ablation", "A1", "--iters", "2",
                 "--out", str(tmp_path / "a1"), "--quiet"]) == 0
    assert np.load(tmp_path / "a1" / "features_seed0.npy").shape == (9, 8, 3)
    assert json.loads((tmp_path / "a1" / "run.json").read_text())["settings"]["ablation"] == "A1"
