"""What the experiment scripts share: one cached result file per table row, so an interrupted
experiment resumes where it stopped (delete a file to recompute its row; a row of other settings
stops the script), and the command line their tables record."""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from benchmarks.common import cpu_model
from rsjax.cluster import run
from rsjax.configs import differences
from rsjax.configs.ms2anet import training_settings
from rsjax.data.paths import DataError
from rsjax.train.checkpoint import write_json_atomic


def reports_errors(main: Callable) -> Callable:
    """An experiment's ``main`` that ends with a one-line message, not a traceback, on what a user
    can fix: a scene or dataset it cannot load (:class:`DataError`, whose message names the fix) or
    an output folder it cannot write."""
    spec = main.__globals__.get("__spec__")             # run as python -m, the module is __main__
    name = spec.name if spec is not None else main.__module__

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DataError as e:
            raise SystemExit(f"{name}: {e}") from None
        except OSError as e:
            raise SystemExit(f"{name}: {type(e).__name__}: {e}; pass an --out you can write to.") from None
    return wrapped


def machine() -> str:
    """What the tables say of the machine that made them: CPU model, core count, host name, and
    the accelerator JAX computes on when it is not the CPU."""
    import jax
    dev = jax.devices()[0]
    accel = "" if dev.platform == "cpu" else f", {jax.device_count()} x {dev.device_kind} ({dev.platform})"
    return f"{cpu_model()}, {os.cpu_count()} cores (host {platform.node()}){accel}"


def name_list(allowed) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of ``allowed``."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: not "
                                             f"{'one' if len(unknown) < 2 else 'among'} of {', '.join(allowed)}")
        return names
    return parse


# What a result made before a setting existed was computed with: the setting's value then. ``keep``
# is not here: rows made before it existed kept 'evaluated', and the tables show each row's keep.
BEFORE_IT_EXISTED = {"spf_odd": "crop", "dtype": "float32"}


def _as_made(stored: dict, settings: dict) -> dict:
    """``stored`` with the settings of :data:`BEFORE_IT_EXISTED` that it lacks (at the level where
    ``settings`` asks for them) filled in with their values from before they existed."""
    out = dict(stored)
    for k, v in settings.items():
        if k not in out and k in BEFORE_IT_EXISTED:
            out[k] = BEFORE_IT_EXISTED[k]
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _as_made(out[k], v)
    return out


def cached(path: Path, settings: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``compute()``, written to ``path`` with the machine and the wall time, or read back from
    ``path`` when it holds a result of the same ``settings`` (keys of the result; nested dicts
    compared key by key; a setting a stored result lacks, made before it existed, is compared as
    it was then, :data:`BEFORE_IT_EXISTED`, or not at all). A result of other settings stops the
    script, naming them. Returns the result and whether it was computed now."""
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        if diffs := differences(_as_made(stored, settings), settings):
            raise SystemExit(f"{path} holds a result of other settings ({'; '.join(diffs)}): pass them again, "
                             "use another --out, or delete the file to compute its row again.")
        return stored, False
    t0 = time.time()
    result = compute()
    result.update(machine=machine(), wall_s=time.time() - t0)
    write_json_atomic(path, result)
    return result, True


def cached_run(path: Path, scene, cfg, seeds, **extra) -> tuple[dict, bool]:
    """``rsjax.cluster.run`` of ``scene`` with ``cfg`` over ``seeds``, with ``extra`` added, through
    :func:`cached` (the settings: the seeds, and the fields of ``cfg`` that act for its method,
    :func:`rsjax.configs.ms2anet.training_settings`, with the k-means seed)."""
    seeds = list(seeds)
    settings = {"seeds": seeds, "config": {**training_settings(cfg), "kmeans_seed": int(cfg.kmeans_seed)}}
    return cached(path, settings, lambda: {**run(scene, cfg, seeds, out_dir=None, progress=False), **extra})


SCORE_COLUMNS = "OA | AA | Kappa | NMI | ARI | time (s)"


def score_cells(summary: dict) -> str:
    """The :data:`SCORE_COLUMNS` cells of a table row, mean +/- std over seeds."""
    s = summary["summary"]
    return " | ".join(f"{s[k]['mean']:{f}} +/- {s[k]['std']:{f}}"
                      for k, f in (("OA", ".2f"), ("AA", ".2f"), ("Kappa", ".2f"), ("NMI", ".3f"), ("ARI", ".3f"),
                                   ("time", ".1f")))


def oa_line(label: str, summary: dict) -> str:
    s = summary["summary"]
    return f"{label:<40} OA {s['OA']['mean']:.2f} +/- {s['OA']['std']:.2f} ({summary.get('wall_s', 0):.0f} s)"


def command_line(module: str, parser: argparse.ArgumentParser, args: argparse.Namespace,
                 shown: tuple[str, ...] = ()) -> str:
    """The command that reproduces ``args``: ``python -m module`` with the options named in ``shown``
    (destinations) and every other option whose value differs from its default, in the parser's
    order, so a table records exactly what produced it."""
    parts = [f"python -m {module}"]
    for dest, value in vars(args).items():
        if dest not in shown and value == parser.get_default(dest):
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        if value is True:
            parts.append(flag)
        elif value is not False and value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
