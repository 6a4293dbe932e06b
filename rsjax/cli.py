"""The ``rsjax`` command line: ``rsjax cluster`` (MS2A-Net and baselines on a hyperspectral scene)
and ``rsjax embed {train,evaluate,retrieve}`` (SNCA-CE scene embeddings)."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from rsjax.data.paths import DataError
from rsjax.embed_cli import add_embed_parser
from rsjax.hostmem import keep_freed_memory


def _seeds(text: str) -> list[int]:
    """``5`` -> seeds 0..4; ``0,3,7`` -> those seeds (distinct, not negative)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a count (5) or a list (0,3,7), got {text!r}")
    if not seeds:
        raise argparse.ArgumentTypeError(f"takes a count of 1 or more (5: seeds 0..4) or a list (0,3,7; 3, for "
                                         f"seed 3 alone), got {text!r}")
    if min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"lists distinct seeds of 0 or more, got {text!r}")
    return seeds


def _checked(cast, ok, says: str):
    """An argparse type: ``cast(text)``, refused with "must ``says``" unless ``ok(value)``
    (text ``cast`` cannot read: argparse's "invalid int value" or "invalid float value")."""
    def parse(text: str):
        v = cast(text)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must {says}, got {text}")
        return v
    parse.__name__ = cast.__name__
    return parse


# argparse types of the numeric options (rsjax cluster, rsjax embed); NaN fails every check
positive_int = _checked(int, lambda v: v >= 1, "be a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "be an integer of 0 or more")
positive_float = _checked(float, lambda v: 0 < v < float("inf"), "be a positive number")
non_negative_float = _checked(float, lambda v: 0 <= v < float("inf"), "be a number of 0 or more")
fraction = _checked(float, lambda v: 0 <= v <= 1, "lie in [0, 1]")


def m_schedule(text: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    from rsjax.configs import parse_m_schedule
    try:
        return parse_m_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def add_cluster_parser(sub) -> None:
    from rsjax.cluster import METHODS
    from rsjax.data.hsi import REGISTRY
    from rsjax.models.layers import COMPUTE_DTYPES
    p = sub.add_parser("cluster", help="cluster a hyperspectral scene (MS2A-Net or a baseline)",
                       description="Cluster a hyperspectral scene and report Hungarian-matched OA, AA, Kappa, "
                                   "per-class accuracy, NMI and ARI over seeds. With no arguments: MS2A-Net "
                                   "on the embedded Salinas-A scene, one seed, 800 iterations.")
    src = p.add_argument_group("input (a registered scene, or your own files)")
    src.add_argument("--dataset", default=None, help=f"registered scene: {', '.join(REGISTRY)} (default salinas-a)")
    src.add_argument("--cube", help="your cube: .mat, .npy, .npz, ENVI .hdr or GeoTIFF (H x W x D)")
    src.add_argument("--gt", help="your ground truth (H x W, 0 = unlabeled)")
    src.add_argument("--class-names", type=lambda t: [n.strip() for n in t.split(",")], default=None,
                     help="names of your ground truth's labels, comma-separated, in ascending label order")
    p.add_argument("--method", choices=METHODS, default="ms2anet")
    p.add_argument("--seeds", type=_seeds, default=[0], help="a count (5 -> seeds 0..4) or a list (0,3,7)")
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations (default 800)")
    p.add_argument("--lambda", dest="lam", type=non_negative_float, default=None, help="spectral mean constraint weight (default 0.1)")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--ablation", choices=("A1", "A2", "A3"), default=None,
                   help="A1 spectral stream only, A2 spatial only, A3 both (default)")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default=None,
                   help="MS2A-Net's convolutions: float32 (default) or bfloat16 (mixed precision, for GPUs)")
    p.add_argument("--out", default=None,
                   help="output directory (default ./rsjax_out/<scene>_<method>); a rerun into it resumes an interrupted run "
                        "and does not train finished seeds again")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args) -> int:
    from rsjax import configs
    from rsjax.cluster import format_table, run
    from rsjax.data.hsi import load_scene
    if args.dataset and (args.cube or args.gt):
        raise DataError("pass either --dataset or --cube/--gt, not both.")
    cfg = configs.get("ms2anet")
    cfg.method = args.method
    for key in ("iters", "lam", "lr", "ablation", "dtype"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if cfg.iters < cfg.chunk:
        cfg.chunk = cfg.iters
    if args.class_names and args.cube is None:
        raise DataError("--class-names names the labels of your own --gt; registered scenes have theirs.")
    scene = load_scene(args.dataset, args.cube, args.gt, class_names=args.class_names)
    out = args.out or f"rsjax_out/{scene.name}_{cfg.method}"   # one folder per scene and method
    summary = run(scene, cfg, args.seeds, out_dir=out, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary["summary"], indent=2))
    else:
        print(format_table(summary))
        print(f"wrote {out}/: metrics.json, run.json, labels_seed*.npy" + (", labels_seed*.tif" if scene.georef else "")
              + ", class_map.png"
              + (", features_seed*.npy, checkpoint_seed*/ (+ .json), losses_seed*.npy" if cfg.method != "kmeans" else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rsjax import __version__
    parser = argparse.ArgumentParser(prog="rsjax", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rsjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cluster_parser(sub)
    add_embed_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "embed":   # before JAX starts: SNCA-CE step buffers reused, not faulted in every step
        keep_freed_memory(warn_if_late=False)    # called in-process after JAX started (tests): nothing to do
    previous = signal.signal(signal.SIGTERM, _interrupt)   # kill / timeout / a job scheduler: as Ctrl-C
    try:
        return args.func(args)
    except (DataError, FileNotFoundError, FloatingPointError) as e:   # each message names the fix
        print(f"rsjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrsjax: interrupted; the same command again resumes from the last checkpoint.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
