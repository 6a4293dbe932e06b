"""experiments/table_clustering.py: the statistics its notes print; experiments/common.py: the command
line the tables record; experiments/table_snca.py: a tiny table, which names the machine that trained
its runs, not the one that made the table."""
import numpy as np
import pytest
from scipy import stats

from experiments.table_clustering import welch_note


def test_welch_note_matches_hand_computed_statistics():
    """Standard errors, difference and Welch's p-value as computed by hand (t, Welch-Satterthwaite
    degrees of freedom, Student's t tail); identical samples give p = 1; one seed gives no note."""
    a, b = [58.0, 61.5, 55.2, 60.1, 63.0], [52.0, 54.5, 57.1, 50.3]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = 2 * stats.t.sf(abs(t), dof)
    note = welch_note(a, b)
    assert f"rsjax {np.sqrt(va):.2f}, PyTorch {np.sqrt(vb):.2f}" in note
    assert f"difference {np.mean(a) - np.mean(b):+.2f}" in note and f"p = {p:.2f})" in note
    assert "p = 1.00" in welch_note(a, list(a)) and welch_note([60.0], b) == ""


def test_command_line_reproduces_the_arguments():
    """experiments/common.command_line: the recorded command, parsed again, gives the same arguments;
    options left at their default appear only when asked for."""
    import argparse
    import shlex

    from experiments.common import command_line, name_list
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=name_list(("a", "b")), default=["a", "b"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--spf-odd", default="crop")
    ap.add_argument("--torch-reference", default=None)
    ap.add_argument("--report-only", action="store_true")
    for argv in ([], ["--scenes", "b", "--report-only"], ["--seeds", "20", "--torch-reference", "r/t"]):
        args = ap.parse_args(argv)
        command = command_line("experiments.x", ap, args, shown=("seeds",))
        assert command.startswith("python -m experiments.x --")
        assert ap.parse_args(shlex.split(command)[3:]) == args
        assert ("--scenes" in command) == (args.scenes != ["a", "b"]) and "--seeds" in command
    assert command_line("m", ap, ap.parse_args([])) == "python -m m"
    assert command_line("m", ap, ap.parse_args(["--scenes", "b,a"])) == "python -m m --scenes b,a"


@pytest.mark.parametrize("argv,says", [(["--seeds", "0"], "--seeds: must be a positive integer, got 0"),
                                       (["--iters", "-3"], "--iters: must be a positive integer"),
                                       (["--scenes", "salinas"], "salinas: not one of salinas-a, indian-pines-subset"),
                                       (["--methods", "kmean,ae"], "kmean: not one of kmeans, ae, cae, ms2anet")])
def test_clustering_experiments_refuse_bad_arguments_before_any_work(argv, says, capsys, tmp_path):
    from experiments import ablation_ms2anet, reference_torch, table_clustering
    mains = [table_clustering.main] + ([ablation_ms2anet.main, reference_torch.main] if argv[0] != "--methods" else [])
    for main in mains:
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(tmp_path / "o")])
        assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reference_verdict_only_for_the_reference_s_iterations():
    from types import SimpleNamespace

    from experiments.table_clustering import format_markdown
    summary = {"summary": {k: {"mean": 80.0, "std": 1.0} for k in ("OA", "AA", "Kappa", "NMI", "ARI", "time")},
               "runs": [{"OA": 80.0}], "keep": "updated"}
    args = SimpleNamespace(seeds=1, iters=20, command="c", spf_odd="crop", torch_reference="nowhere")
    text = format_markdown({("samson", "ms2anet"): summary}, args)
    assert "after 20 iterations; not compared with the reference, which trained 800" in text
    assert "within one reference std" in format_markdown({("samson", "ms2anet"): summary},
                                                         SimpleNamespace(**{**vars(args), "iters": 800}))


def test_a_pytorch_reference_of_other_iterations_is_not_compared(tmp_path):
    import json
    from types import SimpleNamespace

    from experiments.table_clustering import format_markdown
    summary = {"summary": {k: {"mean": 80.0, "std": 1.0} for k in ("OA", "AA", "Kappa", "NMI", "ARI", "time")},
               "runs": [{"OA": 80.0}, {"OA": 81.0}], "keep": "updated"}
    torch_run = {"spf_odd": "crop", "iters": 20, "seeds": [0, 1], "summary": summary["summary"], "runs": summary["runs"]}
    (tmp_path / "samson.json").write_text(json.dumps(torch_run))
    args = SimpleNamespace(seeds=2, iters=800, command="c", spf_odd="crop", torch_reference=str(tmp_path))
    text = format_markdown({("samson", "ms2anet"): summary}, args)
    assert f"the PyTorch run in {tmp_path} trained 20 iterations, not compared" in text and "Welch" not in text
    (tmp_path / "samson.json").write_text(json.dumps({**torch_run, "iters": 800}))
    assert "Welch's t-test" in format_markdown({("samson", "ms2anet"): summary}, args)


def test_table_snca_report_only_without_finished_runs_says_so(tmp_path):
    from experiments import table_snca
    with pytest.raises(SystemExit, match=r"holds no finished run of these settings \(2 epochs\); run without "
                                         r"--report-only"):
        table_snca.main(["--methods", "ce", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path / "new"),
                         "--report-only"])


def test_table_snca_names_the_machine_that_trained_its_runs(tmp_path, monkeypatch, capsys):
    """One tiny run (a one-block ResNet, 16 px, one epoch) trained under a machine called "trainer";
    the table made again elsewhere with --report-only still names the trainer."""
    import json
    from types import SimpleNamespace

    from experiments import table_snca
    from tests.tiny_embed import B, SIZE, tiny_cfg

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10).astype(np.int32)
    np.savez(tmp_path / "tiny.npz", images=rng.integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8),
             labels=labels, class_names=np.array(["a", "b", "c", "d"]))
    monkeypatch.setattr(table_snca, "configs", SimpleNamespace(get=tiny_cfg))
    monkeypatch.setattr(table_snca, "keep_freed_memory", lambda: None)   # glibc's settings are process-wide
    argv = ["--dataset", str(tmp_path / "tiny.npz"), "--methods", "ce", "--seeds", "1", "--epochs", "1",
            "--image-size", str(SIZE), "--batch-size", str(B), "--out", str(tmp_path / "t")]
    monkeypatch.setattr(table_snca, "machine", lambda: "trainer")
    table_snca.main(argv)
    assert json.loads((tmp_path / "t/runs/ce_s0/results.json").read_text())["machine"] == "trainer"
    monkeypatch.setattr(table_snca, "machine", lambda: "reporter")
    table_snca.main(argv + ["--report-only"])
    table = (tmp_path / "t/table.md").read_text()
    assert "machine: trainer," in table and "reporter" not in table and "| ce | 1 |" in table
    history = tmp_path / "t/runs/ce_s0/history.json"      # as if the run had trained one epoch more
    history.write_text(json.dumps(json.loads(history.read_text()) + [{"epoch": 1, "loss": 1.0, "time": 1.0}]))
    with pytest.raises(SystemExit, match="holds a run of 2 epochs, more than --epochs 1"):
        table_snca.main(argv + ["--report-only"])   # not reported as a row of 1 epoch
    with pytest.raises(SystemExit):
        table_snca.main(argv + ["--methods", "ce,tripplet"])
    assert "tripplet: not one of snca-ce-mb, snca-ce-mu, snca-mb, ce, triplet" in capsys.readouterr().err


def test_table_snca_gives_a_spread_only_where_there_are_two_seeds_or_more():
    from types import SimpleNamespace

    from experiments.table_snca import COLUMNS, format_markdown

    def run(v):
        return {**{c: v for c in COLUMNS}, "train_time": 60.0, "machine": "m"}

    args = SimpleNamespace(dataset="d", image_size=16, batch_size=4, epochs=1, lr=0.01, m_schedule="none", command="c")
    lines = format_markdown({"two": [run(70.0), run(74.0)], "one": [run(55.5)]}, args).splitlines()
    two = next(l for l in lines if l.startswith("| two |"))
    one = next(l for l in lines if l.startswith("| one |"))
    assert "| 2 | 72.00 +/- 2.00 |" in two                  # population std of (70, 74)
    assert "+/-" not in one and "| 1 | 55.50 |" in one


def test_cached_rows_are_reused_only_for_their_settings(tmp_path):
    """A cached row is read back for the same settings (a setting it predates is not compared), and
    one of other settings stops the script naming the difference, rather than join the table."""
    from experiments.common import cached
    calls = []

    def compute():
        calls.append(1)
        return {"seeds": [0, 1], "config": {"iters": 800, "lam": 0.1}, "OA": 60.0}

    row = tmp_path / "row.json"
    first, new = cached(row, {"seeds": [0, 1], "config": {"iters": 800, "lam": 0.1}}, compute)
    assert new and first["OA"] == 60.0 and "machine" in first and "wall_s" in first
    again, new = cached(row, {"seeds": [0, 1], "config": {"iters": 800, "lam": 0.1, "keep": "updated"}}, compute)
    assert not new and again == first and len(calls) == 1
    with pytest.raises(SystemExit, match=r"other settings \(seeds: \[0, 1\] -> \[0, 1, 2\]; config.lam: 0.1 -> 0.0\)"):
        cached(row, {"seeds": [0, 1, 2], "config": {"iters": 800, "lam": 0.0}}, compute)
    # a row made before spf_odd existed was made with 'crop': it serves crop, and is no resize row
    assert not cached(row, {"seeds": [0, 1], "config": {"iters": 800, "spf_odd": "crop"}}, compute)[1]
    with pytest.raises(SystemExit, match=r"other settings \(config.spf_odd: 'crop' -> 'resize'\)"):
        cached(row, {"seeds": [0, 1], "config": {"iters": 800, "spf_odd": "resize"}}, compute)
    assert len(calls) == 1


def test_a_cached_row_is_compared_on_the_settings_that_act_for_its_method(tmp_path):
    """k-means on the spectra trains nothing: other iterations, keep or spf_odd do not make its row another."""
    from experiments.common import cached_run
    from rsjax import configs
    from rsjax.data.hsi import Scene
    rng = np.random.default_rng(0)
    gt = np.repeat(np.arange(1, 4), 10).reshape(5, 6)
    scene = Scene("tiny", (rng.normal(size=(5, 6, 4)) + gt[..., None]).astype(np.float32), gt, ["a", "b", "c"])
    cfg = configs.get("ms2anet")
    cfg.method, cfg.iters = "kmeans", 10
    first, new = cached_run(tmp_path / "k.json", scene, cfg, [0])
    cfg.iters, cfg.keep, cfg.spf_odd = 12, "evaluated", "resize"
    again, new_again = cached_run(tmp_path / "k.json", scene, cfg, [0])
    assert new and not new_again and again["runs"][0]["OA"] == first["runs"][0]["OA"]
    cfg.kmeans_seed = 1
    with pytest.raises(SystemExit, match=r"config.kmeans_seed: 0 -> 1"):
        cached_run(tmp_path / "k.json", scene, cfg, [0])


def test_a_scene_it_cannot_load_or_an_out_it_cannot_write_ends_in_one_line(tmp_path, monkeypatch):
    from experiments import table_clustering
    monkeypatch.setenv("RSJAX_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match=r"^experiments.table_clustering: .*trento.*Trento.mat does not exist; put the "
                                         "file there or set RSJAX_DATA"):
        table_clustering.main(["--scenes", "trento", "--methods", "kmeans", "--seeds", "1", "--out", str(tmp_path / "o")])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"experiments.table_clustering: FileExistsError: .*pass an --out you can write"):
        table_clustering.main(["--methods", "kmeans", "--seeds", "1", "--out", str(tmp_path / "file")])
