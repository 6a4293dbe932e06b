"""``rsjax embed {train,evaluate,retrieve}``: SNCA-CE scene embeddings from the command line."""
from __future__ import annotations

import json
from pathlib import Path


MOVED = "where the run's dataset is now, if it has moved since training (checked against its recorded sha1)"


def add_embed_parser(sub) -> None:
    from rsjax.cli import fraction, m_schedule, non_negative_float, non_negative_int, positive_float, positive_int
    from rsjax.models.layers import COMPUTE_DTYPES
    from rsjax.train.embed import METHODS
    p = sub.add_parser("embed", help="learn and evaluate scene embeddings (SNCA-CE and baselines)")
    esub = p.add_subparsers(dest="embed_command", required=True)

    t = esub.add_parser("train", help="train a method on a scene dataset, then evaluate it on the test split")
    t.add_argument("--dataset", default="ucmerced",
                   help="ucmerced, rsscn7 (the 128 px arrays), ucmerced_subset, rsscn7_subset, tfds:<builder>, "
                        "an .npz or a folder of class folders (default ucmerced)")
    t.add_argument("--method", choices=METHODS, default="snca-ce-mb")
    t.add_argument("--workdir", default=None, help="run directory (default runs/<dataset>_<method>_s<seed>); "
                   "an existing run there is resumed")
    for name, typ, help_ in (("epochs", positive_int, "epochs (default 100, the paper's)"),
                             ("image-size", positive_int,
                              "training resolution; images are resized to it (default 256, the paper's)"),
                             ("load-size", positive_int,
                              "hold the dataset in memory resized to this size (for large images, as AID's "
                              "600 px: a tenth of the memory at 192); default as stored"),
                             ("batch-size", positive_int, "batch size (default 256, the paper's)"),
                             ("lr", positive_float, "SGD learning rate (default 0.01, the paper's)"),
                             ("sigma", positive_float, "SNCA temperature (default 0.1, the paper's)"),
                             ("dim", positive_int, "embedding size D (128)"),
                             ("m", fraction, "MB bank momentum (default 0.5) or MU encoder EMA momentum (default 0.999)"),
                             ("seed", non_negative_int, "seed of split, init, batches and augmentation")):
        t.add_argument(f"--{name}", type=typ, default=None, help=help_)
    t.add_argument("--lambda", "--lam", dest="lam", type=non_negative_float, default=None,
                   help="lambda of the metric term (default 1, the paper's)")
    t.add_argument("--m-schedule", type=m_schedule, default=None,
                   help="MB bank momentum raised from these epochs on, EPOCH:M pairs (the authors' code: "
                        "80:0.8,120:0.9); default none, the paper's fixed m")
    t.add_argument("--dtype", choices=COMPUTE_DTYPES, default=None,
                   help="float32 (default) or bfloat16 (mixed precision, for GPUs)")
    t.add_argument("--pretrained", default=None, help="a torchvision ResNet18 state_dict (.pth) to start from")
    t.add_argument("--json", action="store_true", help="print the results as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = esub.add_parser("evaluate", help="kNN / k-means / retrieval table of a trained run, with figures")
    e.add_argument("checkpoint", help="the run directory (--workdir of 'embed train') or one of its checkpoints")
    e.add_argument("--queries", default=None, help="classify and retrieve these images against the run's "
                   "training archive instead of its test split")
    e.add_argument("--out", default=None, help="where results.json and figures go (default <run>/eval, "
                   "or <run>/eval_epoch_XXXX for a checkpoint)")
    e.add_argument("--json", action="store_true", help="print the table as JSON")
    e.add_argument("--dataset", default=None, help=MOVED)
    e.set_defaults(func=cmd_evaluate)

    r = esub.add_parser("retrieve", help="the archive images nearest to one image")
    r.add_argument("checkpoint", help="the run directory or one of its checkpoints")
    r.add_argument("image", help="a JPEG, PNG or TIFF image")
    r.add_argument("-k", type=positive_int, default=5, help="number of neighbours (default 5)")
    r.add_argument("--out", default=None, help="PNG of the query and its neighbours "
                   "(default ./neighbours_<image name>.png; a folder: that file in it)")
    r.add_argument("--dataset", default=None, help=MOVED)
    r.set_defaults(func=cmd_retrieve)


def cmd_train(args) -> int:
    from rsjax import configs
    from rsjax.data.scenes import dataset_key
    from rsjax.embedding import EVALUATION_FILES, train_run
    from rsjax.metrics.retrieval import format_table, scalar_scores
    cfg = configs.get(args.method)
    cfg.dataset = dataset_key(args.dataset)
    for key in ("epochs", "image_size", "load_size", "batch_size", "lr", "sigma", "lam", "dim", "m", "seed", "pretrained", "dtype"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.m_schedule is not None:
        cfg.m_schedule_epochs, cfg.m_schedule_values = args.m_schedule
    if cfg.pretrained:          # read again on every resume: from wherever that runs
        cfg.pretrained = str(Path(cfg.pretrained).expanduser().resolve())
    name = args.dataset if cfg.dataset == args.dataset else Path(cfg.dataset).stem   # a path: its last part
    workdir = args.workdir or f"runs/{name.replace('/', '_').replace(':', '_')}_{args.method}_s{cfg.seed}"
    results = train_run(cfg, workdir, progress=not args.quiet)
    print(json.dumps(scalar_scores(results), indent=1) if args.json else format_table(results))
    if not args.json:
        print(f"wrote {workdir}/: checkpoints/, history.json, "
              f"{', '.join(f for f in EVALUATION_FILES if (Path(workdir) / f).exists())}")
    return 0


def cmd_evaluate(args) -> int:
    from rsjax.embedding import EVALUATION_FILES, evaluate_run, locate_run
    from rsjax.metrics.retrieval import format_table, scalar_scores
    workdir, ckpt = locate_run(args.checkpoint)
    out = args.out or workdir / ("eval" if workdir.samefile(args.checkpoint) else f"eval_{ckpt.name}")
    # ckpt, not the run: the checkpoint named below even if training writes a newer one meanwhile
    results = evaluate_run(ckpt, queries=args.queries, out_dir=out, dataset=args.dataset)
    print(json.dumps(scalar_scores(results), indent=1) if args.json else format_table(results))
    if not args.json:
        written = [f for f in EVALUATION_FILES if (Path(out) / f).exists()]
        print(f"evaluated {ckpt}; wrote {out}/: {', '.join(written)}")
    return 0


def cmd_retrieve(args) -> int:
    from rsjax.embedding import retrieve
    name = f"neighbours_{Path(args.image).stem}.png"
    out = Path(args.out or name)
    if out.is_dir() or (args.out or "").endswith(("/", "\\")):
        out.mkdir(parents=True, exist_ok=True)
        out = out / name
    elif out.suffix.lower() != ".png":                 # the figure is a PNG whatever the name says
        out = out.with_suffix(".png") if out.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff") \
            else out.with_name(out.name + ".png")
    found = retrieve(args.checkpoint, args.image, k=args.k, out_png=out, dataset=args.dataset)
    print(f"{'rank':>4}  {'cosine':<6}  {'class':<20} archive image")
    for rank, (name, cls, sim) in enumerate(found, start=1):
        print(f"{rank:>4}  {sim:.4f}  {cls:<20} {name}")
    print(f"wrote {out}")
    return 0
