"""An interrupted ``rsjax cluster`` resumes where it stopped and ends where an uninterrupted run
ends; a finished seed is not trained again; a checkpoint of other settings is not resumed."""
import json

import jax
import numpy as np
import pytest

from rsjax import cluster, configs
from rsjax.data.hsi import load_scene, minmax_scale
from rsjax.train import checkpoint as ckpt_lib
from rsjax.train import hsi

from tests.test_cli_cluster import _write_scene


class Interrupt(Exception):
    pass


@pytest.fixture
def scene(tmp_path):
    cube, gt = _write_scene(tmp_path)
    return load_scene(None, cube, gt)


def _cfg(**kw):
    cfg = configs.get("ms2anet")
    cfg.iters, cfg.chunk = 6, 2
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def chunks(monkeypatch):
    """Counts the compiled chunks run; ``fail_at=k`` raises at the k-th (1-based) call."""
    real = hsi._train_chunk
    calls = {"n": 0, "fail_at": None, "raise": Interrupt}

    def counted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise calls["raise"]
        return real(*a, **kw)

    monkeypatch.setattr(hsi, "_train_chunk", counted)
    monkeypatch.setattr(hsi, "CHECKPOINT_EVERY_S", 0.0)      # write after every chunk
    return calls


def _result(out, seed=0):
    state = ckpt_lib.restore(out / f"checkpoint_seed{seed}")
    return (np.load(out / f"labels_seed{seed}.npy"), np.load(out / f"losses_seed{seed}.npy"),
            jax.device_get(state["best_params"]), json.loads((out / "metrics.json").read_text()))


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    jax.tree.map(np.testing.assert_array_equal, a[2], b[2])
    assert a[3]["runs"][0]["OA"] == b[3]["runs"][0]["OA"]


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, scene, chunks, capsys):
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "a", progress=False)
    assert chunks["n"] == 3

    chunks.update(n=0, fail_at=3)                            # killed in the third chunk
    with pytest.raises(Interrupt):
        cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert int(ckpt_lib.restore(tmp_path / "b" / "checkpoint_seed0")["step"]) == 4
    chunks.update(n=0, fail_at=None)
    capsys.readouterr()
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert chunks["n"] == 1                                  # only the chunk that was lost
    assert "resuming at iteration 4 of 6" in capsys.readouterr().err
    _assert_same(_result(tmp_path / "a"), _result(tmp_path / "b"))


def test_a_run_resumed_with_another_chunk_size_ends_as_the_uninterrupted_one(tmp_path, scene, chunks, capsys):
    """Stopped after 2 of 6 iterations in chunks of 2, resumed in chunks of 4: one chunk of 2 to reach
    the new boundary, one of 2 to the end; the chunk size is not part of the run."""
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "a", progress=False)
    chunks.update(n=0, fail_at=2)
    with pytest.raises(Interrupt):
        cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    chunks.update(n=0, fail_at=None)
    cluster.run(scene, _cfg(chunk=4), [0], out_dir=tmp_path / "b", progress=False)
    assert "resuming at iteration 2 of 6" in capsys.readouterr().err and chunks["n"] == 2
    _assert_same(_result(tmp_path / "a"), _result(tmp_path / "b"))


def test_ctrl_c_saves_the_state_of_the_last_chunk_done(tmp_path, scene, chunks, monkeypatch, capsys):
    """Ctrl-C between the minute's checkpoints: the chunks done are saved on the way out, and the
    rerun ends where an uninterrupted run ends."""
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "a", progress=False)
    monkeypatch.setattr(hsi, "CHECKPOINT_EVERY_S", 1e9)     # no regular write before the end
    chunks.update(n=0, fail_at=3, **{"raise": KeyboardInterrupt})
    with pytest.raises(KeyboardInterrupt):
        cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert "checkpoint_seed0: saved at iteration 4 of 6" in capsys.readouterr().err
    assert int(ckpt_lib.restore(tmp_path / "b" / "checkpoint_seed0")["step"]) == 4
    chunks.update(n=0, fail_at=None)
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert chunks["n"] == 1
    _assert_same(_result(tmp_path / "a"), _result(tmp_path / "b"))


def test_killed_while_saving_the_state_resumes_from_the_last_one(tmp_path, scene, chunks, monkeypatch):
    """The sidecar is written before the state: a run killed while it writes the state has a sidecar
    ahead of its state, the previous state stays whole, and resuming cuts the losses to its step."""
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "a", progress=False)
    real_write, saves = ckpt_lib._write, {"n": 0}

    def dies_midway(path, state):
        saves["n"] += 1
        if saves["n"] == 2:
            (path / "part").mkdir(parents=True)
            raise Interrupt
        return real_write(path, state)

    monkeypatch.setattr(ckpt_lib, "_write", dies_midway)
    with pytest.raises(Interrupt):
        cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    side = json.loads((tmp_path / "b" / "checkpoint_seed0.json").read_text())
    assert side["step"] == 4 and int(ckpt_lib.restore(tmp_path / "b" / "checkpoint_seed0")["step"]) == 2
    monkeypatch.setattr(ckpt_lib, "_write", real_write)
    chunks.update(n=0)
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert chunks["n"] == 2
    _assert_same(_result(tmp_path / "a"), _result(tmp_path / "b"))


def test_finished_seeds_are_not_trained_again(tmp_path, scene, chunks, capsys):
    first = cluster.run(scene, _cfg(), [0, 1], out_dir=tmp_path, progress=False)
    before = _result(tmp_path, seed=1)
    chunks.update(n=0)
    capsys.readouterr()
    again = cluster.run(scene, _cfg(), [0, 1, 2], out_dir=tmp_path, progress=False)
    assert chunks["n"] == 3                                  # seed 2 only
    assert capsys.readouterr().err.count("already trained (6 iterations)") == 2
    assert [r["OA"] for r in again["runs"][:2]] == [r["OA"] for r in first["runs"]]
    after = _result(tmp_path, seed=1)
    for a, b in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(a, b)
    jax.tree.map(np.testing.assert_array_equal, before[2], after[2])


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", ["settings", "cube", "method"])
def test_a_folder_holding_another_run_is_refused_and_kept(tmp_path, scene, chunks, change):
    """Other settings, another cube or another method into a folder that holds a run stop before any
    training, naming the differences; the folder's files stay as they were."""
    from dataclasses import replace
    cluster.run(scene, _cfg(), [0, 1], out_dir=tmp_path, progress=False)
    before = _files(tmp_path)
    other, cfg = scene, _cfg()
    if change == "settings":
        cfg = _cfg(lam=0.0)
        says = r"settings\.lam: 0\.1 -> 0\.0"
    elif change == "cube":
        cube = scene.cube.copy()
        cube[0, 0, 0] += 1.0                                 # one value moved
        other, says = replace(scene, cube=cube), r"cube_sha1: '[0-9a-f]+' -> '[0-9a-f]+'"
    else:
        cfg, says = _cfg(method="kmeans"), r"settings\.method: 'ms2anet' -> 'kmeans'"
    chunks.update(n=0)
    with pytest.raises(ValueError, match=says + r".*another --out, or delete that folder"):
        cluster.run(other, cfg, [0], out_dir=tmp_path, progress=False)
    assert chunks["n"] == 0 and _files(tmp_path) == before


def test_a_checkpoint_of_another_training_is_refused_and_kept(tmp_path, scene, chunks):
    """The same check one level down, for callers of ``fit``: a seed's checkpoint of another
    training is neither resumed nor replaced."""
    cube01 = minmax_scale(scene.cube)
    hsi.fit(_cfg(), cube01, 0, progress=False, checkpoint=tmp_path / "ckpt")
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"holds another training \(config\.lr: 0\.001 -> 0\.01\).*delete it"):
        hsi.fit(_cfg(lr=0.01), cube01, 0, progress=False, checkpoint=tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"holds another training \(seed: 0 -> 1\)"):
        hsi.fit(_cfg(), cube01, 1, progress=False, checkpoint=tmp_path / "ckpt")
    assert _files(tmp_path) == before
    hsi.fit(_cfg(seeds=(5,), kmeans_seed=3), cube01, 0, progress=False, checkpoint=tmp_path / "ckpt")  # no effect on training


def test_unreadable_sidecar_trains_afresh(tmp_path, scene, chunks, capsys):
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "a", progress=False)
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    (tmp_path / "b" / "checkpoint_seed0.json").write_text("{not json")
    chunks.update(n=0)
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path / "b", progress=False)
    assert chunks["n"] == 3 and "unreadable; training afresh" in capsys.readouterr().err
    _assert_same(_result(tmp_path / "a"), _result(tmp_path / "b"))


def test_checkpoint_of_another_structure_is_a_clear_error(tmp_path, scene):
    cfg = _cfg()
    cube01 = minmax_scale(scene.cube)
    ckpt = tmp_path / "checkpoint_seed0"
    ckpt_lib.save(ckpt, {"not": np.zeros(3, np.float32)})
    ckpt_lib.write_json_atomic(tmp_path / "checkpoint_seed0.json",
                               {"fingerprint": hsi._fingerprint(cfg, cube01, 0), "step": 2, "losses": [1.0, 1.0], "time": 1.0})
    with pytest.raises(ValueError, match="cannot be restored.*delete it"):
        hsi.fit(cfg, cube01, 0, progress=False, checkpoint=ckpt)


def test_a_folder_of_a_run_made_before_run_json_is_checked_by_its_seeds_and_stamped_when_done(
        tmp_path, scene, chunks):
    """A refused run leaves no run.json behind in a folder that had none (the folder stays usable by
    the run it holds); the accepted rerun stamps it. A different chunk size is the same run."""
    cluster.run(scene, _cfg(), [0], out_dir=tmp_path, progress=False)
    (tmp_path / "run.json").unlink()                            # as a folder of an older rsjax
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint_seed0 holds another training \(config\.lr"):
        cluster.run(scene, _cfg(lr=0.01), [0], out_dir=tmp_path, progress=False)
    assert _files(tmp_path) == before
    chunks.update(n=0)
    cluster.run(scene, _cfg(chunk=3), [0], out_dir=tmp_path, progress=False)   # already trained
    assert chunks["n"] == 0 and (tmp_path / "run.json").is_file()


@pytest.mark.parametrize("iters,chunk", [(0, 4), (4, 0)])
def test_fit_names_iterations_or_chunks_that_are_not_positive(scene, iters, chunk):
    cfg = configs.get("ms2anet")
    cfg.iters, cfg.chunk = iters, chunk
    with pytest.raises(ValueError, match=f"iters and chunk must be positive, got iters={iters}, chunk={chunk}"):
        hsi.fit(cfg, minmax_scale(scene.cube), seed=0, progress=False)


def test_fit_names_a_cube_of_the_wrong_rank_or_with_nan(scene):
    cfg = _cfg()
    x = minmax_scale(scene.cube)
    with pytest.raises(ValueError, match=r"fit takes one scene's cube, \(H, W, D\), got shape \(1, 9, 8, 5\)"):
        hsi.fit(cfg, x[None], seed=0, progress=False)
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"holds NaN or Inf values; check the scene with rsjax.data.hsi.validate"):
        hsi.fit(cfg, x, seed=0, progress=False)


def test_sigterm_saves_the_state_and_exits_130(tmp_path):
    """A real SIGTERM (as kill and timeout send) to a training `rsjax cluster`: the chunk in flight ends,
    the state is checkpointed, and the process says how to resume and exits with 130."""
    import os
    import re
    import select
    import signal
    import subprocess
    import sys
    import time
    cube, gt = _write_scene(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "rsjax", "cluster", "--cube", str(cube), "--gt", str(gt),
                             "--iters", "1000000", "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    err, deadline = b"", time.time() + 240
    try:
        while not re.search(rb"\| *[1-9][0-9]*/1000000", err):     # the progress bar: a chunk is done
            assert time.time() < deadline and proc.poll() is None, err.decode(errors="replace")[-2000:]
            if select.select([proc.stderr], [], [], 1.0)[0]:
                err += os.read(proc.stderr.fileno(), 65536)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"rsjax: interrupted; the same command again resumes from the last checkpoint." in rest
    saved = json.loads((tmp_path / "o" / "checkpoint_seed0.json").read_text())
    assert saved["step"] > 0 and int(ckpt_lib.restore(tmp_path / "o" / "checkpoint_seed0")["step"]) == saved["step"]
