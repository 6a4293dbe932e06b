"""experiments/ablation_ms2anet.py: Table V's parameter counts against hand counts, and the cached
rows (a finished row is read back, not recomputed), table and figure on a tiny scene."""
import numpy as np
import pytest

from experiments import ablation_ms2anet as ab
from experiments import common
from rsjax import configs
from rsjax.data.hsi import load_scene

from tests.test_cli_cluster import _write_scene


@pytest.mark.parametrize("bands", [5, 63])
def test_table_v_counts_by_hand(bands):
    d1 = 12
    branch = lambda k: k * k * bands * d1 + d1 + 2 * d1      # kernel, bias, BatchNorm scale and offset
    (row,) = ab.table_v({"x": bands})
    assert row["dilated_spatial"] == 3 * branch(5)
    assert row["plain_spatial"] == branch(5) + branch(9) + branch(17)
    assert row["plain"] - row["dilated"] == row["plain_spatial"] - row["dilated_spatial"]
    # the whole network, counted from a real initialisation
    import jax
    import jax.numpy as jnp
    from rsjax.models.ms2anet import MS2ANet
    params = MS2ANet(bands).init(jax.random.key(0), jnp.zeros((1, 6, 7, bands)), train=True)["params"]
    assert row["dilated"] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_rows_are_cached_and_reported(tmp_path, monkeypatch):
    cube, gt = _write_scene(tmp_path)
    scene = load_scene(None, cube, gt)
    cfg = configs.get("ms2anet")
    cfg.iters = cfg.chunk = 2
    results = {}
    for value in (0.0, 0.1):
        cfg.lam = value
        summary, new = common.cached_run(tmp_path / f"row_{value}.json", scene, cfg, [0, 1], study="lambda", value=value)
        assert new and summary["value"] == value and len(summary["runs"]) == 2
        results.setdefault(("tiny", "lambda"), []).append((value, summary))

    def must_not_run(*a, **k):
        raise AssertionError("a cached row was recomputed")

    monkeypatch.setattr(common, "run", must_not_run)
    again, new = common.cached_run(tmp_path / "row_0.1.json", scene, cfg, [0, 1])
    assert not new and again["summary"] == results[("tiny", "lambda")][1][1]["summary"]

    class Args:
        scenes, studies, seeds, iters = "tiny", "lambda", 2, 2
        command = "python -m experiments.ablation_ms2anet --scenes tiny --studies lambda --seeds 2 --iters 2"
    text = ab.format_markdown(ab.table_v({"tiny": 5}), results, Args)
    assert "| tiny | lambda | 0.1 |" in text and "| tiny | 5 |" in text
    assert ab.plot(results, tmp_path / "a.png").stat().st_size > 1000


def test_unknown_study_is_rejected(capsys):
    with pytest.raises(SystemExit):
        ab.main(["--studies", "depth", "--out", "/tmp/unused"])
    assert "unknown studies ['depth']" in capsys.readouterr().err
