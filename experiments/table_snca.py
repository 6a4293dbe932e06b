"""SNCA-CE paper, Tables III-IV analogue on UC Merced (the real 128 x 128 arrays), from scratch on a
CPU: kNN@{1,5,10} accuracy, k-means NMI and ACC, mAP and MAP@R, mean +/- std over seeds, for
SNCA-CE(MB), SNCA-CE(MU), SNCA(MB), CE only and Triplet.

    python -m experiments.table_snca --out results/mine                # defaults below
    python -m experiments.table_snca --methods snca-ce-mb,ce --seeds 1 --epochs 10 --out results/mine
    python -m experiments.table_snca --seeds 3 --epochs 10 --out results/snca_lr0.01 --report-only
                                                   # the table of the committed runs, again

Every run keeps its own directory under <out>/runs/ (checkpoints every epoch), so an interrupted
experiment resumes where it stopped; finished runs are reused (a run made with other settings
stops the script: use another --out for them; the default, results/snca, holds the committed runs
at lr 0.05). The table goes to <out>/table.md, the PR curves of seed 0 to <out>/pr_curves.png
and the learning curves to <out>/learning_curves.png.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.common import command_line, machine, name_list
from rsjax import configs
from rsjax.cli import positive_float, positive_int
from rsjax.configs import parse_m_schedule
from rsjax.data.paths import DataError
from rsjax.embedding import train_run
from rsjax.hostmem import keep_freed_memory
from rsjax.train.embed import check_resumable

METHODS = ("snca-ce-mb", "snca-ce-mu", "snca-mb", "ce", "triplet")
COLUMNS = ("knn_oa@1", "knn_oa@5", "knn_oa@10", "kmeans_nmi", "kmeans_acc", "map", "map@r")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ucmerced", help="a dataset rsjax embed train takes (default ucmerced)")
    ap.add_argument("--methods", type=name_list(METHODS), default=list(METHODS), help="comma-separated methods")
    ap.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1 (default 3)")
    ap.add_argument("--epochs", type=positive_int, default=30, help="epochs per run (default 30)")
    ap.add_argument("--image-size", type=positive_int, default=64, help="training resolution (default 64)")
    ap.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    ap.add_argument("--lr", type=positive_float, default=configs.get(METHODS[0]).lr,
                    help="SGD learning rate (default: the paper's, as in rsjax/configs)")
    ap.add_argument("--m-schedule", default="none",
                    help="MB bank momentum schedule, EPOCH:M pairs (the authors' code: 80:0.8,120:0.9); "
                         "default none, the paper's fixed m = 0.5")
    ap.add_argument("--out", default="results/snca", help="where the runs, table and figures go (default results/snca)")
    ap.add_argument("--report-only", action="store_true",
                    help="build the table from the finished runs only; train nothing")
    args = ap.parse_args(argv)
    args.command = command_line("experiments.table_snca", ap, args,
                                shown=("seeds", "epochs", "image_size", "batch_size", "lr"))
    try:
        schedule = parse_m_schedule(args.m_schedule)
    except ValueError as e:
        ap.error(str(e))
    keep_freed_memory()
    out = Path(args.out)
    rows: dict[str, list[dict]] = {}
    histories, curves = {}, {}
    for method in args.methods:
        for seed in range(args.seeds):
            cfg = configs.get(method)
            cfg.dataset, cfg.seed, cfg.epochs = args.dataset, seed, args.epochs
            cfg.image_size, cfg.batch_size, cfg.lr = args.image_size, args.batch_size, args.lr
            cfg.m_schedule_epochs, cfg.m_schedule_values = schedule
            workdir = out / "runs" / f"{method}_s{seed}"
            done = workdir / "results.json"
            t0 = time.time()
            try:
                check_resumable(workdir, cfg)       # before a finished run is reused as it is
            except DataError as e:
                raise SystemExit(f"{e} Here: pass the run's settings again, or another --out for these.")
            trained = _epochs_trained(workdir)
            if trained > args.epochs:
                raise SystemExit(f"{workdir} holds a run of {trained} epochs, more than --epochs {args.epochs}: "
                                 f"pass --epochs {trained}, or another --out for these.")
            if done.exists() and trained == args.epochs:
                results = json.loads(done.read_text())
            elif args.report_only:
                continue
            else:
                try:
                    results = train_run(cfg, workdir, progress=False,
                                        extra={"machine": machine()})   # the table may be made later, elsewhere
                except DataError as e:                                  # a dataset it cannot use: its message
                    raise SystemExit(f"experiments.table_snca: {e}")
                print(f"{method:<11} seed {seed}: kNN@10 {results['knn_oa@10']:.2f}  NMI {results['kmeans_nmi']:.2f}  "
                      f"mAP {results['map']:.2f}  ({time.time() - t0:.0f} s)", flush=True)
            history = json.loads((workdir / "history.json").read_text())
            results["train_time"] = sum(h["time"] for h in history)
            rows.setdefault(method, []).append(results)
            if seed == 0:
                histories[method] = [100 * h["val_knn_acc"] for h in history]
                curves[method] = results
    if not rows:
        raise SystemExit(f"experiments.table_snca: {out} holds no finished run of these settings "
                         f"({args.epochs} epochs); run without --report-only to train them.")
    (out / "table.md").write_text(format_markdown(rows, args))
    from rsjax.plots.embedding import learning_curves_figure, pr_curves_figure
    pr_curves_figure(curves, out / "pr_curves.png", title=f"{args.dataset}: test queries vs train archive (seed 0)")
    learning_curves_figure(histories, out / "learning_curves.png", title=f"{args.dataset}: validation kNN@10")
    print((out / "table.md").read_text())


def _epochs_trained(workdir: Path) -> int:
    history = workdir / "history.json"
    return json.loads(history.read_text())[-1]["epoch"] + 1 if history.exists() else 0


def trained_on(rows: dict) -> str:
    """The machines that trained the table's runs (recorded in each run's results.json)."""
    return "; ".join(sorted({r.get("machine", "not recorded") for runs in rows.values() for r in runs})) or "no runs"


def format_markdown(rows: dict, args) -> str:
    head = ["method", "seeds", *COLUMNS, "train time / run (min)"]
    lines = [f"Dataset `{args.dataset}` (70/10/20 stratified split per seed), ResNet18 from scratch at "
             f"{args.image_size} x {args.image_size}, batch {args.batch_size}, {args.epochs} epochs, lr {args.lr}, "
             f"MB bank momentum schedule {args.m_schedule}; "
             f"machine: {trained_on(rows)}, command: `{args.command}`. Mean +/- std over seeds (one seed: its value), in %.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in rows.items():
        cells = []
        for c in COLUMNS:
            v = np.array([r[c] for r in runs])
            cells.append(f"{v.mean():.2f} +/- {v.std():.2f}" if len(v) > 1 else f"{v[0]:.2f}")  # no spread from one seed
        t = np.mean([r["train_time"] for r in runs]) / 60
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + f" | {t:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
