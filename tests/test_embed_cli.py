"""``rsjax embed train / evaluate / retrieve`` end to end on a tiny real-format dataset."""
import json

import numpy as np
import pytest
from PIL import Image

from rsjax.cli import main


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """40 images of 4 colour-coded classes, 20 x 20, in the .npz layout of the shipped arrays."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10).astype(np.int32)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.float32)
    images = np.clip(base[labels][:, None, None, :] + rng.normal(0, 20, (40, 20, 20, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["red", "green", "blue", "yellow"]),
             files=np.array([f"img{i}.png" for i in range(40)]))
    return path


def _config_of(workdir):
    """The config a run in ``workdir`` was trained with, as a caller would pass it to resume."""
    from rsjax import configs
    stored = json.loads((workdir / "config.json").read_text())
    cfg = configs.get(stored["method"])
    cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in cfg})
    cfg.data_sha1 = ""                  # taken from the data
    return cfg


@pytest.fixture(scope="module")
def trained_run(tiny_npz, tmp_path_factory):
    from rsjax import configs
    from rsjax.embedding import train_run
    cfg = configs.get("snca-ce-mb")
    cfg.dataset, cfg.epochs, cfg.image_size, cfg.batch_size = str(tiny_npz), 2, 16, 8
    cfg.stage_sizes, cfg.num_filters, cfg.dim, cfg.eval_batch_size = (1, 1, 1, 1), 8, 16, 16
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train_run(cfg, workdir, progress=False)


def test_train_writes_results_history_and_figures(trained_run):
    workdir, results = trained_run
    for key in ("knn_oa@1", "knn_oa@10", "kmeans_nmi", "kmeans_acc", "map", "map@r", "p@1", "recall@5"):
        assert 0.0 <= results[key] <= 100.0
    history = json.loads((workdir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and all("val_knn_acc" in h for h in history)
    for name in ("results.json", "tsne.png", "similarity.png", "pr_curve.png", "retrieval.png", "learning_curve.png"):
        assert (workdir / name).stat().st_size > 0
    assert (workdir / "checkpoints" / "epoch_0002").is_dir()


def test_the_written_embeddings_give_the_reported_scores(trained_run):
    """embeddings.npz holds the archive and query embeddings the scores came from, with their labels and
    rows in the dataset: evaluating them again gives results.json's figures."""
    from rsjax.embedding import load_run
    from rsjax.metrics.retrieval import evaluate_embeddings
    workdir, results = trained_run
    run = load_run(workdir)
    with np.load(workdir / "embeddings.npz") as f:
        e = dict(f)
    np.testing.assert_array_equal(e["archive_index"], run.split["train"])
    np.testing.assert_array_equal(e["query_index"], run.split["test"])
    np.testing.assert_array_equal(e["archive_labels"], run.data.labels[run.split["train"]])
    np.testing.assert_array_equal(e["query_labels"], run.data.labels[run.split["test"]])
    assert list(e["class_names"]) == run.data.class_names and e["archive"].shape == (len(run.split["train"]), 16)
    again = evaluate_embeddings(e["archive"], e["archive_labels"], e["queries"], e["query_labels"], 4,
                                seed=int(run.cfg.seed), class_names=run.data.class_names)
    for key in ("knn_oa@1", "knn_oa@10", "kmeans_nmi", "map", "p@1"):
        assert again[key] == pytest.approx(results[key])


def test_evaluate_cli_json_and_queries(trained_run, tiny_npz, capsys):
    workdir, results = trained_run
    assert main(["embed", "evaluate", str(workdir), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["knn_oa@10"] == pytest.approx(results["knn_oa@10"])
    assert main(["embed", "evaluate", str(workdir), "--queries", str(tiny_npz), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == 40


def test_evaluate_a_given_checkpoint(trained_run, capsys):
    """A checkpoint path evaluates that checkpoint, not the newest, into <run>/eval_epoch_XXXX."""
    workdir, results = trained_run
    first = workdir / "checkpoints" / "epoch_0001"
    assert main(["embed", "evaluate", str(first)]) == 0
    assert f"evaluated {first}; wrote {workdir / 'eval_epoch_0001'}/: results.json" in capsys.readouterr().out
    written = json.loads((workdir / "eval_epoch_0001" / "results.json").read_text())
    assert written["checkpoint"] == "epoch_0001" and results["checkpoint"] == "epoch_0002"
    from rsjax.embedding import load_run
    own, newest = load_run(first).variables["params"], load_run(workdir).variables["params"]
    assert not np.allclose(own["fc1"]["kernel"], newest["fc1"]["kernel"])
    assert (workdir / "eval_epoch_0001" / "tsne.png").stat().st_size > 0


def test_retrieve_cli(trained_run, tmp_path, capsys):
    workdir, _ = trained_run
    Image.fromarray(np.full((30, 30, 3), [30, 30, 200], np.uint8)).save(tmp_path / "q.png")
    assert main(["embed", "retrieve", str(workdir), str(tmp_path / "q.png"), "-k", "3",
                 "--out", str(tmp_path / "r.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "archive image" in lines[0] and "img" in lines[1]
    assert (tmp_path / "r.png").stat().st_size > 0


def test_retrieve_finds_an_archive_image_itself(trained_run, tmp_path):
    """An image of the training archive, saved and read back, is its own nearest neighbour (cosine
    1, up to ties), and the neighbours come in order of falling cosine."""
    from rsjax.embedding import load_run, retrieve
    workdir, _ = trained_run
    run = load_run(workdir)
    i = int(run.split["train"][3])
    Image.fromarray(run.data.images[i]).save(tmp_path / "own.png")
    found = retrieve(workdir, tmp_path / "own.png", k=4)
    sims = [sim for _, _, sim in found]
    assert sims == sorted(sims, reverse=True) and sims[0] == pytest.approx(1.0, abs=1e-5)
    assert run.data.files[i] in [name for name, _, sim in found if sim >= sims[0] - 1e-6]
    assert found[0][1] == run.data.class_names[run.data.labels[i]]


def test_errors_name_the_problem(trained_run, tiny_npz, tmp_path, capsys):
    workdir, _ = trained_run
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["embed", "retrieve", str(workdir), str(tmp_path / "bad.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert main(["embed", "evaluate", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    # queries of other classes than the archive's
    d = np.load(tiny_npz)
    np.savez(tmp_path / "other.npz", images=d["images"], labels=d["labels"], class_names=np.array(list("wxyz")))
    assert main(["embed", "evaluate", str(workdir), "--queries", str(tmp_path / "other.npz"), "--out", str(tmp_path)]) == 2
    assert ("classes w, x, y, z are not among the run's 4 classes (red, green, blue, yellow)"
            in capsys.readouterr().err)
    # a training split smaller than one batch
    assert main(["embed", "train", "--dataset", str(tiny_npz), "--workdir", str(tmp_path / "w"), "--batch-size", "64",
                 "--quiet"]) == 2
    assert "fewer than one batch of 64; lower --batch-size" in capsys.readouterr().err
    # training into a finished run's directory with other settings is refused, naming them
    assert main(["embed", "train", "--dataset", str(tiny_npz), "--workdir", str(workdir), "--batch-size", "8",
                 "--lr", "0.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "lr: 0.01 -> 0.5" in err
    for argv, says in ((["train", "--batch-size", "0"], "--batch-size: must be a positive integer"),
                       (["train", "--sigma", "0"], "--sigma: must be a positive number"),
                       (["train", "--m", "1.5"], "--m: must lie in [0, 1]"),
                       (["train", "--m-schedule", "80"], "EPOCH:M pairs, as 80:0.8,120:0.9"),
                       (["retrieve", str(workdir), "q.png", "-k", "0"], "-k: must be a positive integer")):
        with pytest.raises(SystemExit):
            main(["embed", *argv])
        assert says in capsys.readouterr().err, argv


def test_queries_of_some_classes_are_scored_against_the_run_s_labels(trained_run, tiny_npz, tmp_path, capsys):
    """A query set holding two of the four classes, its own label numbering: scored as those classes,
    k-means with k = 2; its file names are training images', which a warning says."""
    from rsjax.embedding import evaluate_run
    workdir, _ = trained_run
    d = np.load(tiny_npz)
    pick = np.isin(d["labels"], [1, 3])                   # green, yellow
    np.savez(tmp_path / "q.npz", images=d["images"][pick], labels=(d["labels"][pick] == 3).astype(np.int32),
             class_names=np.array(["green", "yellow"]), files=d["files"][pick])
    got = evaluate_run(workdir, queries=str(tmp_path / "q.npz"))
    assert got["n_queries"] == got["n_test"] == 20
    assert set(got["per_class_f1"]["1"]) == {"green", "yellow"}          # the classes queried
    assert got["knn_oa@1"] > 50                            # colour-coded classes: a wrong mapping would score ~0
    assert "14 of the 20 queries have the file name of a training image" in capsys.readouterr().err   # 7 of 10 per class train


def test_a_run_refuses_another_dataset_and_damaged_checkpoints(trained_run, tmp_path, capsys):
    import shutil
    workdir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    assert len(cfg["data_sha1"]) == 40 and cfg["dataset"].endswith("tiny.npz")
    (copy / "config.json").write_text(json.dumps({**cfg, "data_sha1": "0" * 40}))   # as if the data changed since
    assert main(["embed", "evaluate", str(copy), "--out", str(tmp_path / "e")]) == 2
    assert "have changed since this run was trained on it" in capsys.readouterr().err
    from rsjax.embedding import train_run
    with pytest.raises(ValueError, match="have changed since this run was trained on it"):
        train_run(_config_of(workdir), copy, progress=False)      # its own settings, the data changed
    (copy / "config.json").write_text(json.dumps(cfg))
    (copy / "checkpoints" / "epoch_0009").mkdir()           # an empty newest checkpoint
    assert main(["embed", "evaluate", str(copy), "--out", str(tmp_path / "e")]) == 2
    assert "epoch_0009: cannot be restored" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    shutil.rmtree(copy / "checkpoints" / "epoch_0009")
    assert main(["embed", "evaluate", str(copy), "--out", str(tmp_path / "afile")]) == 2
    assert "--out " in capsys.readouterr().err


def test_retrieve_bounds_k_and_writes_a_png(trained_run, tmp_path, capsys):
    from rsjax.embedding import load_run
    workdir, _ = trained_run
    run = load_run(workdir)
    Image.fromarray(run.data.images[0]).save(tmp_path / "q.png")
    n = run.split["train"].size
    assert main(["embed", "retrieve", str(workdir), str(tmp_path / "q.png"), "-k", str(n + 1)]) == 2
    assert f"-k {n + 1}: the run's archive (its training split) holds {n} images" in capsys.readouterr().err
    assert main(["embed", "retrieve", str(workdir), str(tmp_path / "q.png"), "--out", str(tmp_path / "nb")]) == 0
    assert f"wrote {tmp_path / 'nb.png'}" in capsys.readouterr().out and (tmp_path / "nb.png").is_file()


def test_datasets_too_small_to_evaluate_and_empty_names_are_refused_before_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4).astype(np.int32)
    np.savez(tmp_path / "small.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), labels=labels,
             class_names=np.array(["a", "b", "c"]))
    assert main(["embed", "train", "--dataset", str(tmp_path / "small.npz"), "--batch-size", "2",
                 "--workdir", str(tmp_path / "w"), "--quiet"]) == 2
    assert "too small to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    assert main(["embed", "train", "--dataset", " ", "--quiet"]) == 2
    assert "the dataset is empty" in capsys.readouterr().err


def test_load_size_holds_the_dataset_and_the_queries_resized(tiny_npz):
    from rsjax import configs
    from rsjax.embedding import _queries, load_split
    cfg = configs.get("snca-ce-mb")
    cfg.dataset, cfg.batch_size, cfg.load_size = str(tiny_npz), 8, 12
    data, split = load_split(cfg)
    assert data.images.shape == (40, 12, 12, 3)
    images, labels = _queries(str(tiny_npz), data, split["train"], 12)
    assert images.shape == (40, 12, 12, 3) and labels.tolist() == data.labels.tolist()


def test_a_run_resumed_with_another_load_size_names_it_before_loading(trained_run, tmp_path, monkeypatch):
    import shutil

    import rsjax.embedding
    workdir, _ = trained_run
    shutil.copytree(workdir, tmp_path / "run")
    cfg = _config_of(workdir)
    cfg.load_size = 12
    monkeypatch.setattr(rsjax.embedding, "load_split", lambda cfg: pytest.fail("loaded the dataset"))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(load_size: 0 -> 12\)"):
        rsjax.embedding.train_run(cfg, tmp_path / "run", progress=False)


def test_two_queries_are_scored_without_a_t_sne(trained_run, tiny_npz, tmp_path, capsys):
    from rsjax.embedding import evaluate_run
    workdir, _ = trained_run
    d = np.load(tiny_npz)
    np.savez(tmp_path / "q2.npz", images=d["images"][[0, 10]], labels=np.array([0, 1], np.int32),
             class_names=np.array(["red", "green"]))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "tsne.png").write_bytes(b"an earlier evaluation's")
    got = evaluate_run(workdir, queries=str(tmp_path / "q2.npz"), out_dir=tmp_path / "e")
    assert got["n_test"] == 2 and (tmp_path / "e" / "results.json").exists()
    assert not (tmp_path / "e" / "tsne.png").exists() and (tmp_path / "e" / "retrieval.png").exists()
    err = capsys.readouterr().err
    assert "no t-SNE figure for 2 queries (it needs 3 or more)" in err
    assert "the 2 queries hold one image per class, so k-means (one cluster per class) scores NMI and ACC 100" in err


def test_a_split_without_validation_trains_and_evaluates(tiny_npz, tmp_path):
    from rsjax import configs
    from rsjax.embedding import train_run
    cfg = configs.get("ce")
    cfg.dataset, cfg.epochs, cfg.image_size, cfg.batch_size, cfg.split = str(tiny_npz), 1, 16, 8, (0.8, 0.0, 0.2)
    cfg.stage_sizes, cfg.num_filters, cfg.dim, cfg.eval_batch_size = (1, 1, 1, 1), 8, 16, 16
    results = train_run(cfg, tmp_path / "run", progress=False)
    assert results["n_test"] == 8 and "val_knn_acc" not in json.loads((tmp_path / "run" / "history.json").read_text())[0]


def test_dataset_paths_are_recorded_absolute_and_names_as_they_are(tmp_path, monkeypatch):
    from rsjax.data.scenes import dataset_key
    monkeypatch.chdir(tmp_path)
    assert dataset_key("tiny.npz") == str(tmp_path / "tiny.npz")
    assert dataset_key("./fold/") == str(tmp_path / "fold")
    for name in ("ucmerced", "rsscn7_subset", "tfds:eurosat/rgb", "uc_merced"):
        assert dataset_key(name) == name


def test_ctrl_c_ends_with_a_line_that_says_how_to_resume(monkeypatch, capsys):
    import rsjax.embedding

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(rsjax.embedding, "train_run", interrupted)
    assert main(["embed", "train", "--quiet"]) == 130
    assert "interrupted; the same command again resumes from the last checkpoint" in capsys.readouterr().err


def test_a_moved_dataset_is_found_again_by_its_sha1(trained_run, tiny_npz, tmp_path, capsys):
    """After the dataset moves, --dataset names where it is now (checked against the run's sha1), and
    training resumes from the run with the new path; train_run leaves the caller's config alone."""
    import shutil

    from rsjax import configs
    from rsjax.train.embed import config_conflicts
    workdir, _ = trained_run
    shutil.copy(tiny_npz, tmp_path / "moved.npz")
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "dataset": str(tmp_path / "gone.npz")}))
    assert main(["embed", "evaluate", str(copy), "--out", str(tmp_path / "e")]) == 2
    assert "gone.npz: the run's dataset is not there any more; if it has moved, pass --dataset NEW_PATH" in \
        capsys.readouterr().err
    assert main(["embed", "evaluate", str(copy), "--dataset", str(tmp_path / "moved.npz"), "--json",
                 "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == pytest.approx(
        json.loads((workdir / "results.json").read_text())["map"])
    again = configs.get("snca-ce-mb")
    again.update({k: v for k, v in cfg.items() if k in again and k not in ("stage_sizes", "split", "m_schedule_epochs",
                                                                          "m_schedule_values")})
    again.stage_sizes, again.dataset = tuple(cfg["stage_sizes"]), str(tmp_path / "moved.npz")
    assert config_conflicts({**cfg, "dataset": str(tmp_path / "gone.npz")}, again) == []      # same sha1
    again.data_sha1 = ""
    assert config_conflicts({**cfg, "data_sha1": ""}, again) == [
        f"dataset: {cfg['dataset']!r} -> {str(tmp_path / 'moved.npz')!r}"]                  # no sha1: by path
    with pytest.raises(ValueError, match="its images are of one class"):
        d = np.load(tiny_npz)
        np.savez(tmp_path / "one.npz", images=d["images"][:5], labels=np.zeros(5, np.int32),
                 class_names=np.array(["red"]))
        from rsjax.embedding import evaluate_run
        evaluate_run(workdir, queries=str(tmp_path / "one.npz"))


def test_train_run_leaves_the_callers_config_as_it_was(tiny_npz, tmp_path):
    from rsjax import configs
    from rsjax.embedding import train_run
    cfg = configs.get("ce")
    cfg.dataset, cfg.epochs, cfg.image_size, cfg.batch_size = str(tiny_npz), 1, 16, 8
    cfg.stage_sizes, cfg.num_filters, cfg.dim, cfg.eval_batch_size = (1, 1, 1, 1), 4, 8, 16
    before = cfg.to_json()
    train_run(cfg, tmp_path / "a", progress=False)
    assert cfg.to_json() == before
