"""MS2A-Net paper, Section V (ablation study and hyperparameters), on the scenes available here.

    python -m experiments.ablation_ms2anet                              # Table V; Figs. 12 and 14 on Salinas-A, 3 seeds
    python -m experiments.ablation_ms2anet --studies latent --seeds 3   # Fig. 13 (d = 6 ... 60)
    python -m experiments.ablation_ms2anet --scenes salinas-a,samson --seeds 5 --studies lambda,streams,latent

- Table V: learnable parameters (weights, biases and BatchNorm scales and offsets) of MS2A-Net with
  its dilated 5 x 5 kernels (dilations 1, 2, 4) against plain kernels of the same receptive fields
  (5, 9, 17), counted from the model's own parameter trees, for the band counts of the paper's
  scenes (Trento 63, Houston 2013 144) and of the scenes here. No training.
- Fig. 12 (``lambda``): the spectral mean constraint's weight lambda in {0, 1e-4, 1e-3, 1e-2, 0.1}.
- Fig. 13 (``latent``): d in {6, 12, ..., 60} latent features, d / 3 filters per dilated branch.
- Fig. 14 (``streams``): A1 (spectral-association stream only; SAF clustered), A2 (multiscale spatial
  stream only), A3 (both, the proposed network).

The paper tuned these on Trento, which is not available here. Every other setting is the paper's
default (800 iterations, Adam 1e-3, k-means with random_state 0 on the code of every pixel).
Each (scene, study, value) result is written to ``<out>/<scene>_<study>_<value>.json`` as soon as
it finishes and reused on the next run with the same settings (delete it to recompute), so an
interrupted run resumes.
Writes ``<out>/table.md`` and ``<out>/ablation.png`` (OA mean +/- std against each setting).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments.common import (SCORE_COLUMNS, cached_run, command_line, name_list, oa_line, reports_errors,
                                score_cells)
from rsjax import configs
from rsjax.cli import positive_int
from rsjax.data.hsi import REGISTRY, load_scene

STUDIES = {  # study -> (config key, values, label)
    "lambda": ("lam", (0.0, 1e-4, 1e-3, 1e-2, 0.1), "lambda (Fig. 12)"),
    "latent": ("d1", (2, 4, 6, 8, 10, 12, 14, 16, 18, 20), "latent features d = 3 d1 (Fig. 13)"),
    "streams": ("ablation", ("A1", "A2", "A3"), "streams (Fig. 14)"),
}
PAPER_BANDS = {"trento": 63, "houston2013": 144}
PLAIN_KERNELS = (5, 9, 17)   # plain kernels covering the receptive fields of 5 x 5 dilated by 1, 2, 4


def count_params(bands: int, **model_kw) -> dict:
    """Learnable parameters of MS2A-Net for ``bands`` bands, in total and per top-level module."""
    import jax
    import jax.numpy as jnp

    from rsjax.models.ms2anet import MS2ANet
    model = MS2ANet(bands, **model_kw)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 9, 9, bands)), train=True))
    per = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(sub))
           for name, sub in shapes["params"].items()}
    return {"total": sum(per.values()), **per}


def table_v(bands_by_scene: dict[str, int]) -> list[dict]:
    """Table V: the dilated network against the same network with plain kernels of the same
    receptive fields. The plain count swaps the spatial stream of the dilated network for three
    one-branch streams with kernels 5, 9 and 17 (dilation 1); everything else is unchanged."""
    rows = []
    for scene, bands in bands_by_scene.items():
        dilated = count_params(bands)
        plain_spatial = sum(count_params(bands, dilations=(1,), kernel_size=k)["spatial"] for k in PLAIN_KERNELS)
        plain = dilated["total"] - dilated["spatial"] + plain_spatial
        rows.append({"scene": scene, "bands": bands, "dilated": dilated["total"], "plain": plain,
                     "dilated_spatial": dilated["spatial"], "plain_spatial": plain_spatial,
                     "ratio": plain / dilated["total"]})
    return rows


@reports_errors
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=name_list(REGISTRY), default=["salinas-a"], help="comma-separated registered scenes")
    ap.add_argument("--studies", default="lambda,streams", help=f"any of {', '.join(STUDIES)}, or none")
    ap.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1 (default 3)")
    ap.add_argument("--iters", type=positive_int, default=800, help="training iterations (default 800)")
    ap.add_argument("--out", default="results/ablation")
    args = ap.parse_args(argv)
    args.command = command_line("experiments.ablation_ms2anet", ap, args, shown=("scenes", "studies", "seeds", "iters"))
    studies = [s for s in args.studies.split(",") if s and s != "none"]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        ap.error(f"unknown studies {unknown}; use any of {', '.join(STUDIES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = {name: load_scene(name) for name in args.scenes}

    params = table_v({**PAPER_BANDS, **{name: s.cube.shape[-1] for name, s in scenes.items()}})
    results: dict[tuple[str, str], list] = {}
    for name, scene in scenes.items():
        for study in studies:
            key, values, _ = STUDIES[study]
            for value in values:
                cfg = configs.get("ms2anet")
                cfg.iters = args.iters
                setattr(cfg, key, value)
                summary, new = cached_run(out / f"{name}_{study}_{value}.json", scene, cfg, range(args.seeds),
                                          study=study, value=value)
                results.setdefault((name, study), []).append((value, summary))
                if new:
                    print(oa_line(f"{name} {study} {value}", summary), flush=True)
    (out / "table.md").write_text(format_markdown(params, results, args))
    if results:
        plot(results, out / "ablation.png")
    print((out / "table.md").read_text())


def format_markdown(params: list[dict], results: dict, args) -> str:
    lines = ["Table V analogue: learnable parameters (weights, biases, BatchNorm scales and offsets) of MS2A-Net "
             "with dilated 5 x 5 kernels (dilations 1, 2, 4) and with plain kernels of the same receptive fields "
             f"({', '.join(map(str, PLAIN_KERNELS))}), counted from the model's parameter trees "
             "(`python -m experiments.ablation_ms2anet`).", "",
             "| scene | bands | dilated | plain | plain / dilated | spatial stream: dilated | plain |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scene']} | {r['bands']} | {r['dilated']:,} | {r['plain']:,} | {r['ratio']:.2f} | "
              f"{r['dilated_spatial']:,} | {r['plain_spatial']:,} |" for r in params]
    if results:
        lines += ["", f"Clustering with one setting changed at a time, mean +/- std over {args.seeds} seeds "
                      f"({args.iters} iterations; command: `{args.command}`). OA, AA, Kappa in %; time in seconds per run.", "",
                  f"| scene | study | value | {SCORE_COLUMNS} |", "|---|---|---|---|---|---|---|---|---|"]
        for (scene, study), rows in results.items():
            for value, summary in rows:
                shown = f"d1 = {value} (d = {3 * value})" if study == "latent" else value
                lines.append(f"| {scene} | {study} | {shown} | {score_cells(summary)} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    from rsjax.plots.common import plt, savefig
    studies = sorted({study for _, study in results}, key=list(STUDIES).index)
    fig, axes = plt.subplots(1, len(studies), figsize=(4.2 * len(studies), 3.4), squeeze=False)
    for ax, study in zip(axes[0], studies):
        for (scene, st), rows in results.items():
            if st != study:
                continue
            mean = [summary["summary"]["OA"]["mean"] for _, summary in rows]
            std = [summary["summary"]["OA"]["std"] for _, summary in rows]
            ax.errorbar(range(len(rows)), mean, yerr=std, marker="o", capsize=3, label=scene)
            labels = [str(3 * v) if study == "latent" else str(v) for v, _ in rows]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(STUDIES[study][2])
        ax.set_ylabel("OA (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return savefig(fig, path)


if __name__ == "__main__":
    main()
