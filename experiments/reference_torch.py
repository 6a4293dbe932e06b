"""The MS2A-Net reference math in PyTorch on the same scenes, for comparison with rsjax's table.

    python -m experiments.reference_torch --scenes indian-pines-subset --seeds 5
    python -m experiments.reference_torch --spf-odd resize --out results/reference_torch_resize

Issue #2's reference figures come from the authors' code run on this project's 2-core machine
(3 seeds), whose patch for odd image sizes and random initialisation stream are not known. This
script runs the same math as ``rsjax.models.ms2anet`` in PyTorch eager
(``benchmarks/torch_ms2anet.py``) the way the
authors' ``MS2A_net.py`` trains it: PyTorch's default initialisation after
``torch.manual_seed(seed)``, Adam (lr 1e-3) for 800 iterations, the parameters saved right after
the update of each lowest-loss iteration, M' of those parameters with batch statistics, then the
same k-means and metrics as rsjax (``rsjax.metrics.clustering``). Its spread over seeds shows how
much of a 3- or 5-seed mean is the luck of the seeds. Needs PyTorch: ``pip install 'rsjax[torch]'`` (``.ci/run`` installs it).
Results go to ``<out>/<scene>.json`` (reused by a run with the same settings) and ``<out>/table.md``.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from experiments.common import cached, command_line, name_list, reports_errors
from experiments.table_clustering import REFERENCE_ITERS, REFERENCE_OA
from rsjax.cli import positive_int
from rsjax.data.hsi import REGISTRY, load_scene, minmax_scale
from rsjax.metrics.clustering import clustering_scores, kmeans, summarize


def train_torch(cube01: np.ndarray, seed: int, iters: int = 800, lam: float = 0.1, spf_odd: str = "crop",
                threads: int | None = None) -> np.ndarray:
    """M' (H, W, 36) of the lowest-loss parameters after ``iters`` PyTorch iterations."""
    import torch

    from benchmarks.torch_ms2anet import TorchMS2ANet
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    h, w, d = cube01.shape
    net = TorchMS2ANet(d, spf_odd=spf_odd).train()   # BatchNorm always on batch statistics
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    x = torch.from_numpy(np.ascontiguousarray(cube01.transpose(2, 0, 1)[None], dtype=np.float32))
    best_loss, best = float("inf"), None
    for _ in range(iters):
        loss = net.loss(x, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < best_loss:                   # saved after the update, as the authors' torch.save
            best_loss, best = loss.item(), copy.deepcopy(net.state_dict())
    net.load_state_dict(best)
    with torch.no_grad():
        _, m = net(x)
    return m[0].permute(1, 2, 0).numpy()


def run_scene(name: str, seeds: list[int], iters: int, spf_odd: str) -> dict:
    scene = load_scene(name)
    x = minmax_scale(scene.cube)
    labeled = scene.gt > 0
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        code = train_torch(x, seed, iters, spf_odd=spf_odd)
        labels = kmeans(code, scene.n_classes, seed=0).reshape(scene.gt.shape)
        scores = clustering_scores(scene.gt[labeled], labels[labeled])
        scores.update(time=time.perf_counter() - t0, seed=seed)
        runs.append(scores)
        print(f"{name:<20} seed {seed}: OA {scores['OA']:.2f} ({scores['time']:.0f} s)", flush=True)
    return {"dataset": name, "framework": "pytorch", "spf_odd": spf_odd, "iters": iters, "seeds": seeds,
            "summary": summarize(runs), "runs": runs}


@reports_errors
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=name_list(REGISTRY), default=list(REFERENCE_OA), help="comma-separated registered scenes")
    ap.add_argument("--seeds", type=positive_int, default=5, help="seeds 0 .. N-1 (default 5)")
    ap.add_argument("--iters", type=positive_int, default=800, help="training iterations (default 800)")
    ap.add_argument("--spf-odd", default="crop", choices=("crop", "resize"))
    ap.add_argument("--out", default="results/reference_torch")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("experiments.reference_torch", ap, args, shown=("seeds", "iters", "spf_odd"))
    lines = [f"PyTorch eager, the reference math (`{command}`); mean +/- std over seeds, OA per seed."
             + ("" if args.iters == REFERENCE_ITERS else f" Issue #2's reference trained {REFERENCE_ITERS} iterations: "
                "not shown beside these."), "",
             "| scene | OA | per seed | NMI | ARI | issue #2 reference (3 seeds) |", "|---|---|---|---|---|---|"]
    for name in args.scenes:
        seeds = list(range(args.seeds))
        result, _ = cached(out / f"{name}.json", {"seeds": seeds, "iters": args.iters, "spf_odd": args.spf_odd},
                           lambda: run_scene(name, seeds, args.iters, args.spf_odd))
        s = result["summary"]
        per_seed = ", ".join(f"{r['OA']:.1f}" for r in result["runs"])
        ref = REFERENCE_OA.get(name) if args.iters == REFERENCE_ITERS else None   # like with like only
        lines.append(f"| {name} | {s['OA']['mean']:.2f} +/- {s['OA']['std']:.2f} | {per_seed} | "
                     f"{s['NMI']['mean']:.3f} | {s['ARI']['mean']:.3f} | {f'{ref[0]} +/- {ref[1]}' if ref else '-'} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
