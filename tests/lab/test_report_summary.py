"""The report's summaries (normlab.lab.report): which of two copies of a run is kept, seed order, the accuracy step the paired floor uses, grid order of
re-run grids, the totals of copied runs, the A/B table's largest difference, the CSV's
interval columns and empty cells, the JSON's other implementation, the ``experiments``
filter and runs written before ``impl`` existed. Hand-made run directories, no training."""

import csv
import json
import math

import pytest

from normlab.lab.experiments import RunConfig
from normlab.lab.report import _resolution, load_runs, summarize, write_report
from tests.lab.test_report import fake_run

scipy_stats = pytest.importorskip("scipy.stats", reason="SciPy is the reference here")


def _edit(run_dir, config=None, **changes):
    """Changes fields of a run's summary.json (and of its config in both files)."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(changes)
    if config is not None:
        for key, value in config.items():
            if value is None:
                summary["config"].pop(key, None)
            else:
                summary["config"][key] = value
        (run_dir / "config.json").write_text(json.dumps(summary["config"]))
    path.write_text(json.dumps(summary))


def test_of_two_copies_of_a_run_the_last_finished_is_kept(tmp_path):
    """A run repeated with the same settings and seed (a copied folder): the report keeps the
    one that finished last, whatever the folders' names, and lists the other."""
    out = tmp_path / "runs"
    config = RunConfig(experiment="c", label="A", norms="none", seed=0)
    late = fake_run(out / "a", config, 0.50, t=5)
    early = fake_run(out / "b", config, 0.90, t=1)
    table = summarize(load_runs(out)[0])["c"]
    (row,) = table["rows"]
    assert row["accuracy"]["mean"] == 0.50 and row["per_seed"] == {0: 0.50}
    assert [i["run_dir"] for i in table["meta"]["ignored"]] == [str(early)]
    assert table["meta"]["ignored"][0]["reason"] == f"the same run as {late}"


def test_a_seed_folder_holding_another_seeds_run_is_listed_not_kept_over_the_real_one(tmp_path):
    """seed0 copied to seed1 (the same files): the report took the two for copies of one run and
    dropped the real seed 0 as the older of them, so the row held the copy alone."""
    import shutil

    out = tmp_path / "runs"
    seed0 = fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=0), 0.9)
    fake_run(out, RunConfig(experiment="c", label="B", norms="batch", seed=0), 0.8)
    shutil.copytree(seed0, seed0.parent / "seed1")
    finished, unfinished = load_runs(out)
    assert unfinished == [seed0.parent / "seed1"]
    table = summarize(finished)["c"]
    assert [r["run_dir"] for r in finished if r["config"]["label"] == "A"] == [str(seed0)]
    assert table["rows"][0]["per_seed"] == {0: 0.9} and table["meta"]["ignored"] == []
    write_report(out, tmp_path / "report")
    assert f"- {seed0.parent / 'seed1'}: summary.json holds seed 0's run, in the folder seed1" in (
        tmp_path / "report" / "report.md").read_text()


def test_a_rows_seeds_are_listed_in_seed_order(tmp_path):
    """Runs are read in grid order; a grid that ran seed 2 first still lists seeds 0 1 2."""
    out = tmp_path / "runs"
    for index, seed in enumerate((2, 1, 0)):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9, grid_index=index)
    (row,) = summarize(load_runs(out)[0])["c"]["rows"]
    assert row["seeds"] == [0, 1, 2]
    write_report(out, tmp_path / "report")
    (line,) = csv.DictReader(open(tmp_path / "report" / "c.csv"))
    assert line["seeds"] == "0 1 2"


def test_the_paired_floor_uses_the_fewest_examples_any_run_counted(tmp_path):
    """The step of an accuracy is one example of the smallest test set among both rows' runs:
    here 1/100 (one of A's runs counted 100 images), not 1/500."""
    out = tmp_path / "runs"
    for seed in range(2):
        a = fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.90 + 0.03 * seed)
        fake_run(out, RunConfig(experiment="c", label="B", norms="batch", seed=seed), 0.92 + 0.03 * seed)
        if seed == 1:
            _edit(a, test_examples=100)
    rows = summarize(load_runs(out)[0], baseline="A")["c"]["rows"]
    assert [r["accuracy_examples"] for r in rows] == [100, 500]
    d = rows[1]["paired"]
    # B - A = +0.02 on both seeds: spread floor (1/100) / sqrt(6), t = 0.02 / (floor / sqrt(2)), 1 df
    t = 0.02 / (0.01 / math.sqrt(6) / math.sqrt(2))
    assert d["t"] == pytest.approx(t) and d["p"] == pytest.approx(2 * scipy_stats.t.sf(t, 1))
    assert d["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 1) * 0.01 / math.sqrt(6) / math.sqrt(2))


def test_the_resolution_is_one_example_of_the_smallest_count():
    assert _resolution({"accuracy_examples": 500}, {"accuracy_examples": 100}) == 0.01
    assert _resolution({"accuracy_examples": 1}) == 1.0  # a one-image evaluation: steps of 100%
    assert _resolution({"accuracy_examples": 0}, {"accuracy_examples": 500}) == 0.0  # not recorded


def test_configurations_compare_at_the_first_seed_both_ran(tmp_path):
    """Runs of earlier versions have no grid index and are ordered by finish time: a grid of
    seed 0 ran P then Q, a later one of seed 1 Q then P. The rows follow the first seed both
    ran (P then Q), not the last."""
    out = tmp_path / "runs"
    for t, (label, seed) in enumerate((("P", 0), ("Q", 0), ("Q", 1), ("P", 1))):
        fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), 0.9, t=t)
    rows = summarize(load_runs(out)[0])["c"]["rows"]
    assert [r["label"] for r in rows] == ["P", "Q"]


def test_a_run_copied_from_another_experiment_counts_in_this_ones_totals(tmp_path):
    """Experiment "bc" reuses experiment "c"'s norm-free run (store.find_twin): its source is
    not among bc's runs, so bc counts it once. Matching sources by a bare name suffix took
    "bc/none/..." for a copy of "c/none/..." and counted 0 runs and 0 s."""
    from normlab.lab import store

    out = tmp_path / "runs"
    source = fake_run(out, RunConfig(experiment="c", label="none", norms="none", seed=0), 0.8)
    copy = RunConfig(experiment="bc", label="none", norms="none", seed=0, backend="jax")
    store.copy_run(source, store.run_dir_for(out, copy), copy, out)
    meta = summarize(load_runs(out)[0])["bc"]["meta"]
    assert meta["runs"] == 1 and meta["wall_time_s"] == 3.0


def test_the_ab_tables_largest_difference_is_in_absolute_value(tmp_path):
    """``max_abs_diff``: Keras' layers 0.002 below normlab's on one seed and equal on the other."""
    out = tmp_path / "runs"
    for seed, theirs in enumerate((0.898, 0.9)):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), theirs)
    (ab,) = summarize(load_runs(out)[0])["c"]["ab"]
    assert ab["max_abs_diff"] == pytest.approx(0.002) and ab["diff"]["diffs"] == pytest.approx([-0.002, 0.0])


@pytest.fixture
def three_seeds(tmp_path):
    out = tmp_path / "runs"
    for seed, (bn, gn) in enumerate([(0.97, 0.95), (0.98, 0.96), (0.99, 0.94)]):
        fake_run(out, RunConfig(experiment="compare", label="BN", norms="batch", seed=seed), bn, t=2 * seed)
        fake_run(out, RunConfig(experiment="compare", label="GN", norms="group", seed=seed), gn, t=2 * seed + 1)
        fake_run(out, RunConfig(experiment="compare", label="GN", norms="group", seed=seed, impl="keras"), gn)
        fake_run(out, RunConfig(experiment="other", label="BN", norms="batch", seed=seed), bn)
    return out


def test_the_csv_holds_the_paired_interval_and_leaves_missing_numbers_empty(three_seeds, tmp_path):
    """GN - BN per seed: -0.02, -0.02, -0.05: SciPy's paired 95% interval in paired_diff_low and
    _high (low below high); a statistic there is none of (no train-mode runs) is an empty cell,
    not "nan"."""
    write_report(three_seeds, tmp_path / "report")
    text = (tmp_path / "report" / "compare.csv").read_text()
    rows = {(r["label"], r["impl"]): r for r in csv.DictReader(text.splitlines())}
    interval = scipy_stats.ttest_rel([0.95, 0.96, 0.94], [0.97, 0.98, 0.99]).confidence_interval(0.95)
    gn = rows[("GN", "normlab")]
    assert float(gn["paired_diff_low"]) == pytest.approx(interval.low)
    assert float(gn["paired_diff_high"]) == pytest.approx(interval.high)
    assert float(gn["paired_diff_low"]) < float(gn["paired_diff_high"])
    assert gn["train_mode_accuracy_mean"] == "" and gn["train_mode_accuracy_n"] == "0"
    assert "nan" not in text.lower()


def test_the_json_holds_the_other_implementations_rows(three_seeds, tmp_path):
    """The JSON has Keras' rows too (as the CSV), with per-seed keys as strings."""
    write_report(three_seeds, tmp_path / "report")
    data = json.loads((tmp_path / "report" / "compare.json").read_text())
    (other,) = data["other_rows"]
    assert other["impl"] == "keras" and other["label"] == "GN"
    assert other["per_seed"] == {"0": 0.95, "1": 0.96, "2": 0.94}


def test_write_report_writes_only_the_experiments_asked_for(three_seeds, tmp_path):
    out = tmp_path / "report"
    written = write_report(three_seeds, out, experiments=["other"])
    assert sorted(p.name for p in written) == ["other.csv", "other.json", "other.md", "other.png", "report.md"]
    assert not (out / "compare.md").exists()
    assert "### other" in (out / "report.md").read_text() and "### compare" not in (out / "report.md").read_text()


def test_runs_written_before_impl_existed_are_normlabs(tmp_path):
    """A config without ``impl`` (runs of earlier versions) is normlab's: it stays in the main
    table beside this version's Keras runs, which are compared with it."""
    out = tmp_path / "runs"
    for seed in range(2):
        old = fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        _edit(old, config={"impl": None})
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), 0.9)
    table = summarize(load_runs(out)[0])["c"]
    assert [(r["label"], r["impl"]) for r in table["rows"]] == [("GN", "normlab")]
    assert [r["impl"] for r in table["other_rows"]] == ["keras"]
    assert [(a["main_impl"], a["impl"]) for a in table["ab"]] == [("normlab", "keras")]


def test_runs_count_as_equal_to_the_fourth_decimal_only(tmp_path):
    """"Runs equal to 4 decimals": 0.90004 against 0.9 is (0.9000 both); 0.9003 is not,
    though the two agree to 3 decimals."""
    out = tmp_path / "runs"
    for seed, theirs in enumerate((0.90004, 0.9003)):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), theirs)
    (ab,) = summarize(load_runs(out)[0])["c"]["ab"]
    assert ab["identical_4dp"] == 1 and ab["diff"]["n"] == 2


def test_rows_follow_the_first_seed_either_configuration_ran_whichever_is_met_first(tmp_path):
    """Two grids into one folder, each numbering its runs from 0: seed 0 ran P then Q, seed 1
    (later) Q then P. Comparing at "the first seed both ran" in the order of whichever row came
    first made P before Q and Q before P both true, and the rows came out Q, P."""
    out = tmp_path / "runs"
    for seed, order in ((0, "PQ"), (1, "QP")):
        for index, label in enumerate(order):
            fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), 0.9,
                     grid_index=index, t=10 * seed + index)
    runs = load_runs(out)[0]
    for ordered in (runs, runs[::-1]):
        assert [r["label"] for r in summarize(ordered)["c"]["rows"]] == ["P", "Q"]


def test_write_report_refuses_experiments_it_has_no_runs_of(three_seeds, tmp_path):
    """A misspelled name wrote a report.md with no table, silently."""
    from normlab.lab.report import ReportError

    with pytest.raises(ReportError, match=r"expected names of experiments under runs_dir \(compare, other\)\. "
                                          r"Received: experiments=\['compare', 'othr'\]"):
        write_report(three_seeds, tmp_path / "report", experiments=["compare", "othr"])
    assert not (tmp_path / "report").exists()


def test_runs_without_a_grid_index_follow_their_finish_time_not_their_folder_names(tmp_path):
    """Runs of earlier versions have no grid index: Z finished before A, so Z's row comes first
    (the folders sort the other way)."""
    out = tmp_path / "runs"
    fake_run(out, RunConfig(experiment="c", label="Z", norms="none"), 0.9, t=1)
    fake_run(out, RunConfig(experiment="c", label="A", norms="none"), 0.9, t=2)
    rows = summarize(load_runs(out)[0])["c"]["rows"]
    assert [r["label"] for r in rows] == ["Z", "A"]


def test_configurations_without_a_shared_seed_keep_the_order_of_their_first_runs(tmp_path):
    """No seed to compare them at (each ran other seeds): the rows keep the grid order of
    their first runs, and the first row stays the default baseline."""
    out = tmp_path / "runs"
    for index, (label, seed) in enumerate((("A", 0), ("B", 1), ("C", 2))):
        fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), 0.9, grid_index=index)
    table = summarize(load_runs(out)[0])["c"]
    assert [r["label"] for r in table["rows"]] == ["A", "B", "C"] and table["meta"]["baseline"] == "A"


def test_the_seed_is_never_a_setting_rows_must_share_to_be_paired(tmp_path):
    """The group row of epochs=1 lacks seed 0 (its first run is seed 1, the baseline's seed 0):
    it still pairs with the baseline over seeds 1 and 2. Only epochs tells the two group
    variants apart."""
    out = tmp_path / "runs"
    for seed in range(3):
        fake_run(out, RunConfig(experiment="c", label="BN", norms="batch", seed=seed), 0.90 + 0.01 * seed)
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, epochs=2), 0.85)
        if seed:
            fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.80 + 0.01 * seed)
    rows = summarize(load_runs(out)[0])["c"]["rows"]
    one = next(r for r in rows if r["label"].startswith("GN") and json.loads(r["settings"]) == {"epochs": 1})
    assert one["seeds"] == [1, 2] and one["paired"]["seeds"] == [1, 2]
    assert one["paired"]["mean"] == pytest.approx(-0.10) and one["paired"]["baseline"] == "BN"


def test_only_accuracies_get_the_floor_of_one_example(tmp_path):
    """Two seeds with the same accuracies and loss: each accuracy's interval (the reported, the
    test set's and, in training mode, the test set's again) takes at least the spread of rounding
    to one of 500 images, 1/500 / sqrt(12); the loss (continuous) and the timings keep their
    zero-width interval. (The train-mode accuracy's interval had width 0.)"""
    out = tmp_path / "runs"
    for seed in range(2):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9, loss=0.25, train_mode=0.1)
    (row,) = summarize(load_runs(out)[0])["c"]["rows"]
    floor = scipy_stats.t.ppf(0.975, 1) * (1 / 500) / math.sqrt(12) / math.sqrt(2)
    for key in ("accuracy", "test_accuracy", "train_mode_accuracy"):
        assert row[key]["ci95"] == pytest.approx(floor), key
    assert row["train_mode_loss"]["ci95"] == 0.0
    assert row["loss"]["ci95"] == 0.0 and row["seconds_per_epoch"]["ci95"] == 0.0 and row["steps"]["ci95"] == 0.0


def _sweep(out, series_specs, sizes=(32, 8), seeds=(0, 1), **fields):
    for b in sizes:
        for seed in seeds:
            for series, spec in series_specs:
                config = RunConfig(experiment="bs", label=f"{series} b={b}", series=series, sweep="batch size",
                                   x=b, norms=spec, batch_size=b, seed=seed, **fields)
                fake_run(out, config, 0.9 + 0.01 * seed + (0.002 if spec == "group" else 0.0))


def test_a_sweep_of_one_series_pairs_its_points_with_its_first(tmp_path):
    """One series has no other series to compare with at the same value: its points are
    compared with its first point (the largest batch size), as the rows of a comparison."""
    out = tmp_path / "runs"
    _sweep(out, [("BN", "batch")], sizes=(32, 8, 2))
    table = summarize(load_runs(out)[0])["bs"]
    assert table["meta"]["baseline"] == "BN b=32"
    assert [(r["label"], r["paired"] and r["paired"]["baseline"]) for r in table["rows"]] == [
        ("BN b=32", None), ("BN b=8", "BN b=32"), ("BN b=2", "BN b=32")]


def test_a_sweep_of_one_series_takes_its_own_name_as_the_baseline(tmp_path):
    """``--baseline GN`` on a sweep of GN alone (accepted: it names the series) was reported as
    missing: "G=5 (no 'GN' in this experiment)"."""
    out = tmp_path / "runs"
    _sweep(out, [("GN", "group")])
    assert summarize(load_runs(out)[0], baseline="GN")["bs"]["meta"]["baseline"] == "GN b=32"


def test_a_sweep_names_a_baseline_series_it_lacks(tmp_path):
    out = tmp_path / "runs"
    _sweep(out, [("BN", "batch"), ("GN", "group")])
    meta = summarize(load_runs(out)[0], baseline="LN")["bs"]["meta"]
    assert meta["baseline"] == "series BN at the same batch size (no 'LN' in this experiment)"


def test_every_point_of_a_series_pairs_with_the_baseline_series_at_its_own_value(tmp_path):
    """GN at batch size 8 is compared with BN at 8, not with BN's first point (32)."""
    out = tmp_path / "runs"
    _sweep(out, [("BN", "batch"), ("GN", "group")], sizes=(32, 8, 2))
    rows = summarize(load_runs(out)[0])["bs"]["rows"]
    assert {r["label"]: r["paired"]["baseline"] for r in rows if r["paired"]} == {
        "GN b=32": "BN b=32", "GN b=8": "BN b=8", "GN b=2": "BN b=2"}


def test_the_csv_gives_each_statistic_its_own_column(three_seeds, tmp_path):
    """BN's accuracies 0.97, 0.98, 0.99: mean, std (n - 1) and the t interval's half-width
    in accuracy_mean, _std and _ci95 (SciPy's interval, half its width), n in accuracy_n."""
    write_report(three_seeds, tmp_path / "report")
    rows = {(r["label"], r["impl"]): r for r in csv.DictReader(open(tmp_path / "report" / "compare.csv"))}
    bn = rows[("BN", "normlab")]
    values = [0.97, 0.98, 0.99]
    low, high = scipy_stats.t.interval(0.95, 2, loc=0.98, scale=scipy_stats.sem(values))
    assert float(bn["accuracy_mean"]) == pytest.approx(0.98)
    assert float(bn["accuracy_std"]) == pytest.approx(scipy_stats.tstd(values))
    assert float(bn["accuracy_ci95"]) == pytest.approx((high - low) / 2)
    assert bn["accuracy_n"] == "3"
    assert bn["seeds"].split() == ["0", "1", "2"]  # the ids (the Markdown gives the count)


def test_write_report_refuses_an_out_folder_under_a_file(three_seeds, tmp_path):
    from normlab.lab.store import StoreError

    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match=r"Invalid `out`: expected a folder\. .*which is a file"):
        write_report(three_seeds, tmp_path / "f" / "report")
