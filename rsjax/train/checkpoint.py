"""Orbax checkpoints of whole training-state pytrees, written atomically.

A checkpoint replaces an older one at the same path only once it is complete: it is written
beside it, and the two directories are then swapped by renames. A run killed at any moment of a
save leaves the previous checkpoint, or the new one, restorable at the path.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


def save(path: str | Path, state: Any) -> Path:
    """Write ``state`` (any pytree of arrays) to the directory ``path``, replacing an old one.

    The new checkpoint is written to ``<path>.new`` (orbax: into a temporary directory, renamed
    when complete); then the old one is renamed to ``<path>.old``, the new one to ``path``, and
    the old one deleted. (Orbax's own ``force=True`` deletes the old checkpoint before it writes
    the new one.) A kill between the two renames leaves ``<path>.old``, which :func:`settle`
    puts back."""
    path = Path(path).resolve()
    settle(path)
    new, old = _beside(path, "new"), _beside(path, "old")
    _write(new, jax.device_get(state))
    replaced = path.exists()
    if replaced:
        os.replace(path, old)
    os.replace(new, path)
    if replaced:
        shutil.rmtree(old)
    return path


def _write(path: Path, state: Any) -> None:
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state, force=True)
        ckptr.wait_until_finished()


def _beside(path: Path, what: str) -> Path:
    return path.with_name(f"{path.name}.{what}")


def settle(path: str | Path) -> bool:
    """Whether a complete checkpoint is at ``path``, after finishing what a killed :func:`save`
    left there: the old checkpoint is put back where the new one had not yet replaced it, and
    leftovers (a stale ``.old``, an unfinished ``.new``, orbax's temporary directories) are deleted."""
    path = Path(path).resolve()
    old = _beside(path, "old")
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)
    for left in [_beside(path, "new"), *path.parent.glob(f"{glob.escape(path.name)}.new.orbax-checkpoint-tmp*")]:
        shutil.rmtree(left, ignore_errors=True)
    return path.exists()


def restore(path: str | Path, like: Any | None = None) -> Any:
    """Read a checkpoint; with ``like`` (a pytree of the same structure) the result has its structure."""
    path = Path(path).resolve()
    if not settle(path):
        raise FileNotFoundError(f"{path}: no checkpoint there; check the path or train first.")
    with ocp.StandardCheckpointer() as ckptr:
        if like is None:
            return ckptr.restore(path)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), like)
        return ckptr.restore(path, abstract)


def write_json_atomic(path: str | Path, obj: Any, default: Callable | None = None) -> None:
    """Write ``obj`` as JSON (``default`` as in ``json.dumps``) to ``path`` through a temporary file
    and a rename: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=default))
    os.replace(tmp, path)
