"""What the experiment scripts share: one cached result file per table row, so an interrupted
experiment resumes where it stopped (delete a file to recompute its row), and the command line
their tables record."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import cpu_model
from rsjax.cluster import run
from rsjax.train.checkpoint import write_json_atomic


def machine() -> str:
    """What the tables say of the machine that made them: CPU model, core count, host name, and
    the accelerator JAX computes on when it is not the CPU."""
    import jax
    dev = jax.devices()[0]
    accel = "" if dev.platform == "cpu" else f", {jax.device_count()} x {dev.device_kind} ({dev.platform})"
    return f"{cpu_model()}, {os.cpu_count()} cores (host {platform.node()}){accel}"


def cached_run(path: Path, scene, cfg, seeds, **extra) -> tuple[dict, bool]:
    """``rsjax.cluster.run`` of ``scene`` with ``cfg`` over ``seeds``, written to ``path`` (with the
    machine, the wall time and ``extra``) or read back from it when it exists. Returns the summary
    and whether it was computed now."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text()), False
    t0 = time.time()
    summary = run(scene, cfg, list(seeds), out_dir=None, progress=False)
    summary["machine"] = machine()
    summary["wall_s"] = time.time() - t0
    summary.update(extra)
    write_json_atomic(path, summary)
    return summary, True


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
        if value is True:
            parts.append(flag)
        elif value is not False and value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
