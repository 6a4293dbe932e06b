"""A checkpoint replaces an older one at its path only once complete: a save killed while it writes,
or between its renames, leaves the previous (or the new) checkpoint restorable, and no leftovers."""
import numpy as np
import pytest

from rsjax.train import checkpoint


class Killed(Exception):
    pass


def _tree(v):
    return {"w": np.full((3, 2), v, np.float32), "step": np.int32(v)}


def _saved_value(path):
    return int(checkpoint.restore(path)["step"])


def _only(path):
    """What is left in the checkpoint's folder."""
    return sorted(p.name for p in path.parent.iterdir())


def test_save_replaces_and_restores(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _tree(1))
    checkpoint.save(path, _tree(2))
    restored = checkpoint.restore(path, like=_tree(0))
    np.testing.assert_array_equal(restored["w"], _tree(2)["w"])
    assert _only(path) == ["ckpt"]


def test_killed_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _tree(1))
    real = checkpoint._write

    def dies_midway(p, state):
        (p / "partial").mkdir(parents=True)                   # some of the new checkpoint is on disk
        raise Killed

    monkeypatch.setattr(checkpoint, "_write", dies_midway)
    with pytest.raises(Killed):
        checkpoint.save(path, _tree(2))
    assert _saved_value(path) == 1 and _only(path) == ["ckpt"]   # restore cleared the unfinished .new
    monkeypatch.setattr(checkpoint, "_write", real)
    checkpoint.save(path, _tree(3))
    assert _saved_value(path) == 3


def test_killed_between_the_renames_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _tree(1))
    real = checkpoint.os.replace

    def replace(a, b):
        if str(a).endswith(".new"):                              # the old one is already aside
            raise Killed
        return real(a, b)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(Killed):
        checkpoint.save(path, _tree(2))
    monkeypatch.setattr(checkpoint.os, "replace", real)
    assert not path.exists() and _only(path) == ["ckpt.new", "ckpt.old"]
    assert _saved_value(path) == 1 and _only(path) == ["ckpt"]


def test_killed_before_the_old_one_is_deleted_keeps_the_new(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _tree(1))
    real = checkpoint.shutil.rmtree

    def rmtree(p, *a, **kw):
        if str(p).endswith(".old"):
            raise Killed
        return real(p, *a, **kw)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        checkpoint.save(path, _tree(2))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    assert _only(path) == ["ckpt", "ckpt.old"]
    assert _saved_value(path) == 2 and _only(path) == ["ckpt"]


def test_restore_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        checkpoint.restore(tmp_path / "nothing")
