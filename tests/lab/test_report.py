"""Report rendering from hand-made run directories (no training)."""

import csv
import json
import math

import pytest

from normlab.lab import plots
from normlab.lab.errors import ConfigError
from normlab.lab.experiments import RunConfig
from normlab.lab.report import ReportError, load_runs, render_markdown, stats, summarize, t975, write_report
from normlab.lab.store import run_dir_for, write_json_atomic


def fake_run(out, config: RunConfig, accuracy: float, *, train_mode=None, finished=True, t=0,
             grid_index=None, loss=None, notes=None):
    if not config.backend:
        config = RunConfig(**{**config.to_dict(), "backend": "jax"})
    run_dir = run_dir_for(out, config)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "config.json", config.to_dict())
    if finished:
        write_json_atomic(run_dir / "summary.json", dict(
            config=config.to_dict(), metric="test", accuracy=accuracy,
            loss=1 - accuracy if loss is None else loss, notes=notes or {},
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
    assert round(t975(1), 3) == 12.706 and round(t975(2), 3) == 4.303 and round(t975(30), 3) == 2.042
    assert 2.000 < t975(50) < 2.021 and t975(10_000) == pytest.approx(1.96, abs=1e-3)
    assert math.isnan(t975(0))


def test_stats_mean_std_and_t_interval():
    s = stats([0.97, 0.98, 0.99])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.98) and s["std"] == pytest.approx(0.01)
    assert s["ci95"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3))
    one = stats([0.5, None])
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95"])


def test_unfinished_runs_are_not_counted(runs):
    finished, unfinished = load_runs(runs)
    assert len(finished) == 14 and [p.parent.parent.name for p in unfinished] == ["LN"]


@pytest.mark.parametrize("edit", [
    lambda s: s.update(accuracy="abc"), lambda s: s["config"].update(seed="x"),
    lambda s: s.update(wall_time_s="x"), lambda s: s["config"].update(label=5),
    lambda s: s["params"].update(trainable=True),
    # these passed, then failed in the report with a traceback (or printed 8080.00 %)
    lambda s: s.update(notes=[]), lambda s: s.update(grid_index="a"), lambda s: s.update(training_revision="abc"),
    lambda s: s.update(copied_from=3), lambda s: s.update(accuracy=80.8), lambda s: s.update(test_accuracy=-0.1),
])
def test_a_summary_with_a_value_of_another_type_is_listed_not_read(runs, edit):
    """A hand-edited summary with text for a number made the report fail with a traceback
    (could not convert string to float: 'abc'); such a run is listed with the unreadable ones."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    edit(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    finished, unfinished = load_runs(runs)
    assert len(finished) == 13 and run_dir in unfinished
    assert summarize(finished)["compare"]["rows"][1]["seeds"] == [0, 2]


@pytest.mark.parametrize("experiment", ["sub/dir", "../../escaped"])
def test_a_summary_naming_no_folders_experiment_is_listed_and_nothing_is_written_outside_the_report(
        runs, tmp_path, experiment):
    """The experiment is a file name in the report folder: 'sub/dir' failed with a traceback
    (FileNotFoundError), '../../escaped' wrote escaped.md, .csv, .json and .png beside it."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["experiment"] = experiment
    (run_dir / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "deep" / "er" / "report"
    written = write_report(runs, out)
    assert all(path.parent == out for path in written) and sorted(tmp_path.rglob("escaped*")) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}{ext}" for name in ("bs", "compare")
                                                          for ext in (".md", ".csv", ".json", ".png")) + ["report.md"]
    assert f"- {run_dir}: summary.json names experiment {experiment!r}, in the folder of experiment " \
           "'compare'" in (out / "report.md").read_text()
    assert run_dir in load_runs(runs)[1]


def test_a_run_whose_config_json_was_edited_is_listed_with_the_reason_not_reported(runs, tmp_path):
    """The grid refuses to reuse it ("config.json differs in learning_rate"); the report
    summarized it silently."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    stored = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**stored, "learning_rate": 0.5}))
    finished, unfinished = load_runs(runs)
    assert run_dir in unfinished and str(run_dir) not in [r["run_dir"] for r in finished]
    assert summarize(finished)["compare"]["rows"][1]["seeds"] == [0, 2]
    write_report(runs, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"- {run_dir}: config.json differs from summary.json's config in learning_rate" in text
    assert "delete such a run's directory and rerun its command to redo it" in text


def test_a_summary_whose_label_was_edited_is_listed_not_shown_as_a_row_of_its_own(runs):
    """The row was named after the edited label, with no warning."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["label"] = "LN"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    finished, unfinished = load_runs(runs)
    assert run_dir in unfinished
    assert [(r["label"], r["seeds"]) for r in summarize(finished)["compare"]["rows"]] == [
        ("BN", [0, 1, 2]), ("GN", [0, 2])]


def test_a_row_keeps_its_place_when_its_first_seed_is_missing(runs):
    """Rows followed each configuration's first run: without BN's seed 0, BN's row came after GN's."""
    import shutil

    shutil.rmtree(next(runs.glob("compare/BN/*/seed0")))
    rows = summarize(load_runs(runs)[0])["compare"]["rows"]
    assert [(r["label"], r["seeds"]) for r in rows] == [("BN", [1, 2]), ("GN", [0, 1, 2])]
    # nor moves up when it has a seed the others lack (ranks among other sets of runs do not average)
    out = runs.parent / "four"
    for seed, labels in ((0, "ABCD"), (1, "D")):
        for label in labels:
            fake_run(out, RunConfig(experiment="e", label=label, norms="batch", seed=seed), 0.9,
                     grid_index=4 * seed + "ABCD".index(label))
    assert [r["label"] for r in summarize(load_runs(out)[0])["e"]["rows"]] == list("ABCD")


def test_a_finished_run_without_its_config_is_listed(runs):
    """Runs were found by their config.json: one without it vanished from the report, unlisted. Only a
    run's folder counts: the report's own summary.json (runs/report/) is none."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    (run_dir / "config.json").unlink()
    (runs / "report").mkdir()
    (runs / "report" / "summary.json").write_text("{}")
    finished, unfinished = load_runs(runs)
    assert len(finished) == 13 and unfinished == sorted([run_dir, *(p.parent for p in runs.rglob("LN/*/seed*/*"))])


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
    assert "| BN | 3 | 98.00 ± 1.00 | [95.52, 100.00]* | 0.0200 ± 0.0100 |" in md  # cut at 100 (was 100.48)
    # GN - BN per seed: -2, -2, -5 points; mean -3, std 1.73, t = -3.0, p = 0.095.
    assert "#### Paired differences against BN" in md
    assert "| GN | BN | 3 | -3.00 [-7.30, +1.30] | 0.095 | within noise |" in md
    assert "so the ranking of the means is within noise" in md
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
    assert "![bs](bs.png)" in report and "1 unfinished or unreadable run(s) ignored" in report


def test_write_report_default_folder_and_empty_dir(runs, tmp_path):
    write_report(runs)
    assert (runs / "report" / "report.md").is_file()
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="expected a folder with finished runs"):
        write_report(tmp_path / "empty")


def test_run_folders_written_by_normlab_0_1_0_are_reported(tmp_path):
    """0.1.0 wrote ``OUT/<experiment>/<label>/seed<N>``, with no variant folder (a real
    ``compare --quick`` grid of it): every run was taken as naming another experiment than
    its folder's ("in the folder of experiment 'runs'"), and the report refused the folder."""
    import pathlib
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(pathlib.Path(__file__).parent / "fixtures" / "runs-0.1.0", runs)
    finished, unfinished = load_runs(runs)
    assert len(finished) == 5 and unfinished == []
    write_report(runs)
    rows = summarize(finished)["compare-quick"]["rows"]
    assert sorted(r["label"] for r in rows) == ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "none"]
    assert (runs / "report" / "compare-quick.md").is_file()


@pytest.mark.parametrize("key", ["runs_dir", "out_dir"])
def test_write_report_refuses_an_empty_folder_path(runs, key, monkeypatch):
    """An empty path was read as the current folder (the command line refused it already)."""
    monkeypatch.chdir(runs)  # a folder of runs: the current folder would have been reported
    given = {"runs_dir": runs, "out_dir": None, key: ""}
    with pytest.raises(ReportError, match=rf"Invalid `{key}`: expected a non-empty folder path .*Received: {key}=''"):
        write_report(**given)
    assert not (runs / "report").exists()


def test_sweeps_pair_each_series_with_the_baseline_series_at_the_same_x(runs):
    table = summarize(load_runs(runs)[0])["bs"]
    assert table["meta"]["baseline"] == "series BN at the same batch size"
    gn32 = next(r for r in table["rows"] if r["label"] == "GN b=32")
    assert gn32["paired"]["baseline"] == "BN b=32" and gn32["paired"]["mean"] == 0.0
    assert next(r for r in table["rows"] if r["label"] == "BN b=2")["paired"] is None
    other = summarize(load_runs(runs)[0], baseline="GN")["bs"]
    assert other["meta"]["baseline"] == "series GN at the same batch size"


def test_baseline_option_and_a_clear_ranking(tmp_path):
    out = tmp_path / "runs"
    for seed in range(4):
        for label, acc in (("A", 0.90), ("B", 0.95), ("C", 0.90)):
            fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed),
                     acc + 0.001 * seed * (label != "B"))
    tables = summarize(load_runs(out)[0], baseline="B")
    md = render_markdown("c", tables["c"])
    assert tables["c"]["meta"]["baseline"] == "B"
    assert "| A | B | 4 | -4.85 [-5.06, -4.64] | < 0.001 | lower |" in md
    assert "Beyond the seed noise (interval excluding 0): A lower by 4.85 points" in md
    assert "not corrected for multiple comparisons" in md


def test_a_baseline_may_be_written_as_a_norms_spec_another_way(tmp_path):
    """``compare --baseline 'group( groups = 5 )'`` found the label ``group(groups=5)`` (written as
    ``--norms`` writes it); ``normlab report`` with the same text said it was no configuration."""
    out = tmp_path / "runs"
    for seed in range(2):
        for label, acc in (("batch", 0.95), ("group(groups=5)", 0.90)):
            fake_run(out, RunConfig(experiment="c", label=label, norms=label, seed=seed), acc + 0.01 * seed)
    write_report(out, tmp_path / "report", baseline="group( groups = 5 )")
    table = json.loads((tmp_path / "report" / "c.json").read_text())
    assert table["meta"]["baseline"] == "group(groups=5)"
    assert [r["is_baseline"] for r in table["rows"]] == [False, True]
    for text in ("group(groups=6)", "group(groups=5", "(( "):  # another model, not a placement: errors
        with pytest.raises(ConfigError, match="Invalid `baseline`"):
            write_report(out, tmp_path / "report", baseline=text)


@pytest.mark.parametrize("seeds", [2, 6])
def test_the_same_difference_on_every_seed_gets_the_interval_of_nearly_equal_ones(tmp_path, seeds):
    """Accuracies are multiples of 1/test size. Two seeds that both gain one image gave an
    interval of width 0, p = 0 and "higher" (the t-test's limit); then p = 0.5 from the
    sign-flip test, while gaining one image and one image and a bit gave p = 1e-5 and
    "higher". The spread is now at least that of rounding to whole examples."""
    out = tmp_path / "runs"
    for seed in range(seeds):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9 + 0.01 * seed)
        fake_run(out, RunConfig(experiment="c", label="B", norms="none", seed=seed), 0.902 + 0.01 * seed)
    md = render_markdown("c", summarize(load_runs(out)[0], baseline="A")["c"])
    if seeds == 2:  # one image of 500 on each of two seeds: t = 3.46 on 1 degree of freedom
        assert "| B | A | 2 | +0.20 [-0.53, +0.93] | 0.179 | within noise |" in md
        assert "no configuration differs from its baseline beyond the seed-to-seed noise" in md
    else:
        assert "| B | A | 6 | +0.20 [+0.11, +0.29] | 0.002 | higher |" in md
        assert "(interval excluding 0): B higher by 0.20 points (p = 0.002)" in md
    assert "at least that of rounding to whole examples" in md
    plots.plot(tmp_path / "c.png", "c", summarize(load_runs(out)[0], baseline="A")["c"])


def test_a_norm_free_row_of_another_implementation_stays_in_the_main_table(tmp_path):
    """Runs of earlier versions put it under the first --impl listed (keras): it
    was left out of the tables, and --baseline none paired against the first row."""
    out = tmp_path / "runs"
    for seed in range(2):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), 0.9)
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        fake_run(out, RunConfig(experiment="c", label="none", norms="none", seed=seed, impl="keras"), 0.8)
    table = summarize(load_runs(out)[0], baseline="none")["c"]
    assert [(r["label"], r["impl"]) for r in table["rows"]] == [("GN", "normlab"), ("none", "keras")]
    assert [r["impl"] for r in table["other_rows"]] == ["keras"]
    assert table["meta"]["baseline"] == "none"
    for seed in range(2):  # this version's run of it, beside the earlier one: one row in the main table
        fake_run(out, RunConfig(experiment="c", label="none", norms="none", seed=seed), 0.8)
    table = summarize(load_runs(out)[0], baseline="none")["c"]
    assert [(r["label"], r["impl"]) for r in table["rows"]] == [("GN", "normlab"), ("none", "normlab")]
    # The same model under both implementations is no comparison of them (it showed as
    # a "none" row of the normlab-against-Keras table, counting its runs as agreeing).
    assert [ab["label"] for ab in table["ab"]] == ["GN"]


def test_a_run_copied_within_the_experiment_counts_once_in_the_totals(tmp_path):
    """--impl keras after --impl normlab copies the model without norms (store.find_twin): the report counted
    it, and its training time, twice."""
    from normlab.lab import store

    out = tmp_path / "runs"
    for seed in range(2):
        for impl in ("normlab", "keras"):
            fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl=impl), 0.9)
        ours = RunConfig(experiment="c", label="none", norms="none", seed=seed)
        source = fake_run(out, ours, 0.8)
        theirs = RunConfig(**{**ours.to_dict(), "impl": "keras"})
        store.copy_run(source, store.run_dir_for(out, theirs), theirs, out)
    meta = summarize(load_runs(out)[0])["c"]["meta"]
    assert meta["runs"] == 6 and meta["wall_time_s"] == 6 * 3.0  # 4 GN runs and 2 norm-free ones


def test_a_baseline_missing_from_one_experiment_is_said(tmp_path):
    out = tmp_path / "runs"
    for experiment, labels in (("a", ("A", "B")), ("b", ("C", "D"))):
        for seed in range(2):
            for label in labels:
                fake_run(out, RunConfig(experiment=experiment, label=label, norms="none", seed=seed), 0.9)
    tables = summarize(load_runs(out)[0], baseline="B")
    assert tables["a"]["meta"]["baseline"] == "B"
    assert tables["b"]["meta"]["baseline"] == "C (no 'B' in this experiment)"


def test_the_settings_line_names_the_test_subset(tmp_path):
    """``--quick`` evaluates on 200 test images; the Settings line left that out."""
    out = tmp_path / "runs"
    fake_run(out, RunConfig(experiment="c", label="A", norms="none", test_subset=200), 0.9)
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "train_subset=0, test_subset=200;" in md


def test_an_accuracy_interval_is_cut_at_100(tmp_path):
    out = tmp_path / "runs"
    for seed, acc in enumerate((0.999, 0.80)):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), acc)
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "| A | 2 | 89.95 ± 14.07 | [-36.50, 100.00]* |" not in md
    assert "[0.00, 100.00]*" in md and "*: the interval cut at the value's possible range" in md


def test_loss_and_paired_intervals_are_cut_at_their_possible_range(tmp_path):
    """Two seeds and a wide spread gave a loss interval below 0 and a paired
    difference past -100 points."""
    out = tmp_path / "runs"
    for seed, (a, b, loss) in enumerate(((0.99, 0.10, 0.05), (0.98, 0.95, 0.9))):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), a, loss=loss)
        fake_run(out, RunConfig(experiment="c", label="B", norms="batch", seed=seed), b)
    md = render_markdown("c", summarize(load_runs(out)[0], baseline="A")["c"])
    row = next(line for line in md.splitlines() if line.startswith("| A | 2 |"))
    assert "| 0.4750 ± 0.6010 | [0.0000, 5.8751]* |" in row
    assert "| B | A | 2 | -46.00 [-100.00, +100.00]* |" in md
    assert "*: the interval cut at +-100 points" in md


def test_impl_ab_side_by_side(tmp_path):
    out = tmp_path / "runs"
    for seed in range(3):
        for impl, acc in (("normlab", 0.9), ("keras", 0.9 + (0.001 if seed == 2 else 0.0))):
            fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl=impl), acc)
    table = summarize(load_runs(out)[0])["c"]
    assert [r["impl"] for r in table["rows"]] == ["normlab"] and len(table["other_rows"]) == 1
    (ab,) = table["ab"]
    assert ab["identical_4dp"] == 2 and ab["diff"]["n"] == 3
    md = render_markdown("c", table)
    assert "#### normlab against Keras' built-in layers" in md
    assert ("| GN | 3 | 90.00 ± 0.00 | 90.03 ± 0.06 | +0.03 [-0.11, +0.18] | 0: +0.00, 1: +0.00, 2: +0.10 "
            "| 2 of 3 |") in md
    assert "Accuracies equal to the 4th decimal in 2 of 3 runs" in md
    written = write_report(out, tmp_path / "report")  # Keras' runs drawn beside normlab's
    assert (tmp_path / "report" / "c.png") in written
    rows = list(csv.DictReader(open(tmp_path / "report" / "c.csv")))
    assert [(r["label"], r["impl"]) for r in rows] == [("GN", "normlab"), ("GN", "keras")]
    (ab_json,) = json.loads((tmp_path / "report" / "c.json").read_text())["ab"]
    assert ab_json["diff"]["diffs"] == pytest.approx([0.0, 0.0, 0.001])


def test_one_seed_draws_no_interval_and_says_so(tmp_path):
    out = tmp_path / "runs"
    fake_run(out, RunConfig(experiment="c", label="BN", norms="batch"), 0.9)
    fake_run(out, RunConfig(experiment="c", label="GN", norms="group"), 0.8)
    table = summarize(load_runs(out)[0])["c"]
    assert plots.title("c", table).endswith("1 seed, no interval")
    md = render_markdown("c", table)
    assert "one seed: no spread or interval" in md and "cannot be told apart from seed-to-seed noise" in md
    written = write_report(out, tmp_path / "report")
    assert (tmp_path / "report" / "c.png") in written


def test_every_value_a_sweep_accepts_can_be_reported(tmp_path):
    """Non-positive swept values (old runs) and a diverged loss still plot and report."""
    out = tmp_path / "runs"
    for x in (-1, 2):
        for seed in (0, 1):
            config = RunConfig(experiment="g", label=f"G={x}", series="GN", sweep="groups", x=x,
                               norms="group", seed=seed)
            fake_run(out, config, 0.9, loss=float("nan") if x == 2 and seed == 1 else None)
    written = write_report(out, tmp_path / "report")
    data = json.loads((tmp_path / "report" / "g.json").read_text())
    assert data["rows"][1]["loss"]["n"] == 1  # the NaN loss is left out, not written as NaN
    assert "NaN" not in (tmp_path / "report" / "g.json").read_text()
    assert (tmp_path / "report" / "g.png") in written


def test_digits_fallback_is_announced_in_the_report_and_the_plot(tmp_path):
    out = tmp_path / "runs"
    note = {"dataset_fallback": "not found here, and download failed: offline"}
    fake_run(out, RunConfig(experiment="c-digits", label="BN", norms="batch", dataset="digits"), 0.9, notes=note)
    table = summarize(load_runs(out)[0])["c-digits"]
    assert "MNIST was not available when this ran (not found here, and download failed" in render_markdown(
        "c-digits", table)
    assert "8x8 digits, not MNIST (MNIST unavailable)" in plots.title("c-digits", table)


def test_report_files_share_ordinary_permissions(runs, tmp_path):
    import os

    out = tmp_path / "report"
    write_report(runs, out)
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~mask}


def test_combos_report_says_the_notebook_swapped_the_last_two_labels(tmp_path):
    from normlab.lab.presets import COMBOS, COMBOS_BOTH

    out = tmp_path / "runs"
    for name, placements in (("combos", COMBOS), ("both", COMBOS_BOTH)):
        for label, norms in placements.items():
            fake_run(out, RunConfig(experiment=name, label=label, norms=norms), 0.9)
    tables = summarize(load_runs(out)[0])
    md = render_markdown("combos", tables["combos"])
    assert "Note: Labels follow the models' code. The original notebook swapped the labels" in md
    assert "Note:" not in render_markdown("both", tables["both"])


def test_paired_columns_in_the_csv(runs, tmp_path):
    write_report(runs, tmp_path / "report")
    rows = {r["label"]: r for r in csv.DictReader(open(tmp_path / "report" / "compare.csv"))}
    assert rows["BN"]["paired_baseline"] == "" and rows["GN"]["paired_baseline"] == "BN"
    assert float(rows["GN"]["paired_diff_mean"]) == pytest.approx(-0.03)
    assert float(rows["GN"]["paired_p"]) == pytest.approx(0.0955, abs=1e-3)
    assert rows["GN"]["paired_verdict"] == "within noise"


def test_fixed_steps_sweep_says_what_was_held_fixed(tmp_path):
    out = tmp_path / "runs"
    for b in (32, 8):
        for seed in (0, 1):
            config = RunConfig(experiment="bs", label=f"BN b={b}", series="BN", sweep="batch size", x=b,
                               norms="batch", batch_size=b, max_steps=50, seed=seed)
            fake_run(out, config, 0.9 + 0.01 * seed)
    table = summarize(load_runs(out)[0])["bs"]
    assert table["meta"]["held_fixed"] == "optimizer steps (50 per run)"
    assert "optimizer steps (50 per run) held fixed" in plots.title("bs", table)
    assert "Held fixed across the sweep: optimizer steps (50 per run)." in render_markdown("bs", table)


def test_terminal_text_has_no_markdown_markup():
    from normlab.lab.report_text import plain

    text = plain("### c\n\n**Dataset: digits.** Specs: BN = `batch`.\n\n| a | b |\n|---|---|\n![c](c.png)\n")
    assert text == "c\n=\n\nDataset: digits. Specs: BN = batch.\n\n| a | b |\n|---|---|\n"


@pytest.mark.parametrize("damage", [{}, {"config": {}}, {"config": "GN", "accuracy": 0.9}, [1, 2]])
def test_a_summary_without_the_keys_of_a_finished_run_is_skipped_not_a_traceback(runs, tmp_path, damage):
    """A summary.json edited by hand (or of another schema) counts as unreadable: the
    report leaves it out and says so, and a rerun of the grid redoes that run."""
    from normlab.lab.store import read_finished

    victim = sorted(runs.rglob("summary.json"))[0]
    victim.write_text(json.dumps(damage))
    assert read_finished(victim.parent) is None
    report = write_report(runs, tmp_path / "report")[-1].read_text()
    assert "2 unfinished or unreadable run(s) ignored" in report and str(victim.parent) in report


def test_null_counts_and_wall_time_are_read_as_not_measured(runs):
    """null is how the store writes a number it could not: the report summed and sorted them (a traceback)."""
    run_dir = next(runs.glob("compare/GN/*/seed1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(wall_time_s=None, test_examples=None, train_examples=None)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    meta = summarize(load_runs(runs)[0])["compare"]["meta"]
    assert meta["wall_time_s"] == 3.0 * 5 and meta["test_examples"] == [500] and meta["train_examples"] == [3200]


def test_rows_with_fewer_seeds_than_the_others_are_named(tmp_path):
    """A report of an interrupted grid read like a complete one."""
    out = tmp_path / "runs"
    for seed in range(3):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9)
    fake_run(out, RunConfig(experiment="c", label="B", norms="batch", seed=0), 0.9)
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "Unequal seeds (1, 3): B has fewer finished runs than the others: an interrupted grid" in md
    for label in ("B",):
        fake_run(out, RunConfig(experiment="c", label=label, norms="batch", seed=1), 0.9)
        fake_run(out, RunConfig(experiment="c", label=label, norms="batch", seed=2), 0.9)
    assert "Unequal seeds" not in render_markdown("c", summarize(load_runs(out)[0])["c"])


def test_the_impl_comparison_explains_a_cut_interval():
    from normlab.lab import report_text

    d = {"n": 2, "mean": -0.15, "low": -1.01, "high": 0.70, "seeds": [0, 1], "diffs": [0.4, -0.7],
         "verdict": "within noise"}
    ab = [{"main_impl": "normlab", "impl": "keras", "label": "bn", "diff": d,
           "main": {"n": 2, "mean": 0.5, "std": 0.1}, "other": {"n": 2, "mean": 0.4, "std": 0.1},
           "identical_4dp": 0, "seconds_main": {"mean": 1.0}, "seconds_other": {"mean": 1.0},
           "params_main": 1, "params_other": 1}]
    text = "\n".join(report_text._ab_section(ab, {}))
    assert "-15.00 [-100.00, +70.00]*" in text and "*: the interval cut at +-100 points" in text


def test_the_resolution_counts_the_examples_the_accuracy_is_over():
    """Under the tutorial protocol the accuracy is the last training epoch's, over its
    examples: the floor took the test set's 60,000 instead of 10,000 (6x too small)."""
    from normlab.lab.report import _accuracy_examples

    run = dict(metric="test", test_examples=10_000, train_examples=60_000, examples_seen=120_000, epochs_run=2)
    assert _accuracy_examples(run) == 10_000
    tutorial = dict(run, metric="train (tutorial protocol)", test_examples=60_000, train_examples=10_000,
                    examples_seen=25_000, epochs_run=3)  # 10,000 twice, then 5,000 (--max-steps)
    assert _accuracy_examples(tutorial) == 5_000
    assert _accuracy_examples({"metric": "train (tutorial protocol)"}) == 0  # an old summary: continuous


def test_the_difference_panel_of_a_sweep_keeps_its_last_point_inside(tmp_path):
    """The baseline (G=1) has no difference: the panel's one point, G=10, sat on its right edge, half cut."""
    import matplotlib.pyplot as plt

    for x in (1, 10):
        for seed in (0, 1):
            config = RunConfig(experiment="g", label=f"G={x}", series="GN", sweep="groups", x=x,
                               norms=f"group(groups={x})", seed=seed)
            fake_run(tmp_path, config, 0.9 + 0.03 * (x == 10) + 0.01 * seed)
    fig = plots.figure("g", summarize(load_runs(tmp_path)[0], "G=1")["g"])
    ax, dx = fig.axes[:2]
    low, high = sorted(dx.get_xlim())
    plt.close(fig)
    assert dx.get_xlim() == ax.get_xlim() and low < 1 and high > 10
