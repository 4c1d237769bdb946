"""Report rendering from hand-made run directories (no training)."""

import csv
import json
import math

import pytest

from normlab.lab.experiments import RunConfig
from normlab.lab.report import load_runs, render_markdown, stats, summarize, t975, write_report
from normlab.lab.runner import run_dir_for, write_json_atomic


def fake_run(out, config: RunConfig, accuracy: float, *, train_mode=None, finished=True, t=0,
             grid_index=None):
    run_dir = run_dir_for(out, config)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "config.json", config.to_dict())
    if finished:
        write_json_atomic(run_dir / "summary.json", dict(
            config=config.to_dict(), metric="test", accuracy=accuracy, loss=1 - accuracy,
            train_accuracy=accuracy, train_loss=1 - accuracy, test_accuracy=accuracy,
            test_loss=1 - accuracy, train_mode_accuracy=train_mode,
            train_mode_loss=None if train_mode is None else 1 - train_mode,
            epochs_run=1, steps=100, examples_seen=3200, train_examples=3200, test_examples=500,
            params={"trainable": 1000, "non_trainable": 20 if "batch" in config.norms else 0},
            seconds_per_epoch=2.0, fit_seconds=2.0, first_epoch_seconds=2.0, wall_time_s=3.0,
            backend="jax", versions={}, finished_at=f"2025-01-01T00:00:{t:02d}",
            **({} if grid_index is None else {"grid_index": grid_index})))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "runs"
    for seed, (bn, gn) in enumerate([(0.97, 0.95), (0.98, 0.96), (0.99, 0.94)]):
        fake_run(out, RunConfig(experiment="compare", label="BN", norms="batch", seed=seed), bn, t=2 * seed)
        fake_run(out, RunConfig(experiment="compare", label="GN", norms="group", seed=seed), gn, t=2 * seed + 1)
    for b in (32, 2):
        for seed in (0, 1):
            for series, spec in (("BN", "batch"), ("GN", "group")):
                config = RunConfig(experiment="bs", label=f"{series} b={b}", series=series,
                                   sweep="batch size", x=b, norms=spec, batch_size=b, seed=seed)
                fake_run(out, config, 0.9 + 0.01 * seed, train_mode=0.95, t=10 + b % 7 + seed)
    fake_run(out, RunConfig(experiment="compare", label="LN", norms="layer", seed=0), 0.5, finished=False)
    return out


def test_rows_follow_the_grid_even_when_runs_finish_out_of_order(tmp_path):
    # A parallel executor finishes runs in any order; the table keeps the grid's order.
    out = tmp_path / "runs"
    labels = ["GN", "IN", "LN", "BN"]
    finish = [3, 0, 2, 1]
    for index, (label, t) in enumerate(zip(labels, finish)):
        fake_run(out, RunConfig(experiment="c", label=label, norms="none"), 0.9, t=t, grid_index=index)
    fake_run(out, RunConfig(experiment="c", label="old", norms="none"), 0.9, t=0)  # no index: last
    rows = summarize(load_runs(out)[0])["c"]["rows"]
    assert [r["label"] for r in rows] == ["GN", "IN", "LN", "BN", "old"]


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert 2.000 < t975(50) < 2.021 and t975(10_000) == pytest.approx(1.96, abs=1e-3)
    assert math.isnan(t975(0))


def test_stats_mean_std_and_t_interval():
    s = stats([0.97, 0.98, 0.99])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.98) and s["std"] == pytest.approx(0.01)
    assert s["ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    one = stats([0.5, None])
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95"])


def test_unfinished_runs_are_not_counted(runs):
    finished, unfinished = load_runs(runs)
    assert len(finished) == 14 and [p.parent.name for p in unfinished] == ["LN"]


def test_summary_rows_in_run_order_and_sweeps_sorted(runs):
    tables = summarize(load_runs(runs)[0])
    assert [r["label"] for r in tables["compare"]["rows"]] == ["BN", "GN"]
    bn = tables["compare"]["rows"][0]
    assert bn["seeds"] == [0, 1, 2] and bn["accuracy"]["mean"] == pytest.approx(0.98)
    assert bn["params_non_trainable"] == 20
    assert [r["label"] for r in tables["bs"]["rows"]] == ["BN b=32", "BN b=2", "GN b=32", "GN b=2"]
    assert tables["bs"]["meta"]["held_fixed"] == "epochs (1)"


def test_markdown_table(runs):
    tables = summarize(load_runs(runs)[0])
    md = render_markdown("compare", tables["compare"])
    assert "| BN | 3 | 98.00 ± 1.00 | [95.52, 100.48] | 0.0200 ± 0.0100 |" in md
    assert "Specs: BN = `batch`; GN = `group`." in md
    sweep = render_markdown("bs", tables["bs"])
    assert "train-mode acc %" in sweep and "Held fixed across the sweep: epochs (1)." in sweep


def test_write_report_outputs(runs, tmp_path):
    out = tmp_path / "report"
    written = write_report(runs, out)
    assert sorted(p.name for p in written) == sorted(
        f"{e}{x}" for e in ("compare", "bs") for x in (".md", ".csv", ".json", ".png")) + ["report.md"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["label"] for r in rows] == ["BN", "GN"] and rows[0]["seeds"] == "0 1 2"
    assert float(rows[1]["accuracy_mean"]) == pytest.approx(0.95)
    data = json.loads((out / "compare.json").read_text())  # standard JSON: NaN -> null
    assert data["rows"][0]["train_mode_accuracy"]["mean"] is None
    report = (out / "report.md").read_text()
    assert "![bs](bs.png)" in report and "1 unfinished run(s) ignored" in report


def test_write_report_default_folder_and_empty_dir(runs, tmp_path):
    write_report(runs)
    assert (runs / "report" / "report.md").is_file()
    with pytest.raises(FileNotFoundError, match="Invalid `runs_dir`"):
        write_report(tmp_path / "nothing")
