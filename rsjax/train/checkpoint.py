"""Orbax checkpoints of whole training-state pytrees, written atomically.

Orbax writes into a temporary directory and renames it when the write is complete, so a
run killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save(path: str | Path, state: Any) -> Path:
    """Write ``state`` (any pytree of arrays) to the directory ``path``, replacing an old one."""
    path = Path(path).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, jax.device_get(state), force=True)
        ckptr.wait_until_finished()
    return path


def restore(path: str | Path, like: Any | None = None) -> Any:
    """Read a checkpoint; with ``like`` (a pytree of the same structure) the result has its structure."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint there; check the path or train first.")
    with ocp.StandardCheckpointer() as ckptr:
        if like is None:
            return ckptr.restore(path)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), like)
        return ckptr.restore(path, abstract)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename: a reader sees the old
    file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
