"""The report's text (normlab.lab.report_text): the cells of a one-seed row,
s/epoch, steps and learning-rate cells, the total time, "on every seed" differences and
the sign-flip sentence, p-value cells, the verdict sentence's counts, the A/B summary line,
the list of ignored runs and the digits banner. Hand-made run directories, no training."""

import json
import math

from normlab.lab import report_text
from normlab.lab.experiments import RunConfig
from normlab.lab.report import load_runs, render_markdown, summarize
from tests.lab.test_report import fake_run


def _edit(run_dir, **changes):
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _md(out, baseline=None, name="c"):
    return render_markdown(name, summarize(load_runs(out)[0], baseline)[name])


def _line(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_the_main_tables_cells_of_one_seed_and_of_three(tmp_path):
    """One seed: the mean alone (no "± nan") and "-" for the interval. s/epoch (one decimal),
    steps (whole) and parameter counts (thousands separated) close each row, in that order."""
    out = tmp_path / "runs"
    for seed, acc in enumerate((0.97, 0.98, 0.99)):
        fake_run(out, RunConfig(experiment="c", label="BN", norms="batch", seed=seed), acc)
    fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=0), 0.9)
    md = _md(out)
    assert _line(md, "| GN |") == "| GN | 1 | 90.00 | - | 0.1000 | - | 2.0 | 100 | 1,000 / 0 |"
    assert _line(md, "| BN |") == ("| BN | 3 | 98.00 ± 1.00 | [95.52, 100.00]* | 0.0200 ± 0.0100 "
                                   "| [0.0000, 0.0448]* | 2.0 | 100 | 1,000 / 20 |")


def test_the_settings_line_gives_the_total_time_in_minutes(tmp_path):
    out = tmp_path / "runs"
    for seed in range(2):
        run = fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9)
        _edit(run, wall_time_s=90.0)
    assert "2 runs, 3.0 min total;" in _md(out)


def test_a_varying_learning_rate_gets_a_column_with_three_significant_digits(tmp_path):
    out = tmp_path / "runs"
    for label, lr in (("A", 0.001), ("B", 0.00025)):
        fake_run(out, RunConfig(experiment="c", label=label, norms="none", learning_rate=lr), 0.9)
    md = _md(out)
    assert "| lr | s/epoch |" in md
    assert "| 0.001 | 2.0 |" in _line(md, "| A |") and "| 0.00025 | 2.0 |" in _line(md, "| B |")


def test_a_column_every_run_of_a_row_diverged_in_shows_a_dash_without_a_count(tmp_path):
    """" (n=2)" marks a mean over fewer runs than the row has; a loss no run kept is "-"."""
    out = tmp_path / "runs"
    for seed in range(2):
        run = fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9)
        _edit(run, loss=None, non_finite=["loss"])
    # (The interval of two equal accuracies: their spread floored at one example of 500 / sqrt(12).)
    assert _line(_md(out), "| A |").startswith("| A | 2 | 90.00 ± 0.00 | [89.48, 90.52] | - | - |")


def test_the_same_difference_on_every_seed_without_a_resolution_is_a_sign_flip_verdict(tmp_path):
    """Runs that did not record their test size (old summaries) are continuous: +1 point on
    each of six seeds has no interval; p = 2 / 2**6 from the sign-flip test says "higher"."""
    out = tmp_path / "runs"
    for seed in range(6):
        for label, acc in (("A", 0.90), ("B", 0.91)):
            run = fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), acc + 0.01 * seed)
            _edit(run, test_examples=None)
    md = _md(out, "A")
    assert "| B | A | 6 | +1.00 on every seed | 0.031 | higher |" in md
    assert ("Beyond the seed noise (interval excluding 0, or p < 0.05): B higher by 1.00 points (p = 0.031). "
            "The p-values are not corrected for multiple comparisons. The same difference on every seed "
            "(no interval; p from the exact sign-flip test, which needs 6 seeds to go below 0.05): B.") in md
    assert "Not paired" not in md  # the baseline is no unpaired row


def test_the_verdict_sentence_counts_the_rated_differences(tmp_path):
    """A beyond the noise, B within it, C with one shared seed (no interval, named apart):
    "The other difference" is B alone; p below 0.001 reads "p < 0.001", not "p = < 0.001"."""
    out = tmp_path / "runs"
    for seed in range(4):
        for label, acc in (("base", 0.90), ("A", 0.95), ("B", 0.90 + (0.01 if seed % 2 else -0.01))):
            fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), acc + 0.001 * seed)
    fake_run(out, RunConfig(experiment="c", label="C", norms="none", seed=0), 0.5)
    md = _md(out, "base")
    assert ("Beyond the seed noise (interval excluding 0): A higher by 5.00 points (p < 0.001). "
            "The other difference is within noise. The p-values are not corrected for multiple comparisons. "
            "No interval (fewer than two shared seeds where both runs finished): C.") in md
    alone = tmp_path / "alone"
    for seed in range(4):
        for label, acc in (("base", 0.90), ("A", 0.95)):
            fake_run(alone, RunConfig(experiment="c", label=label, norms="none", seed=seed), acc + 0.001 * seed)
    md = _md(alone, "base")
    assert "A higher by 5.00 points (p < 0.001). The p-values are not corrected" in md
    assert "The other" not in md


def test_p_value_cells():
    assert [report_text._p({"p": p}) for p in (0.0005, 0.001, 0.0123, 1.0)] == ["< 0.001", "0.001", "0.012", "1.000"]
    assert report_text._p({"p": math.nan}) == "-"


def test_the_implementation_comparison_names_differences_below_and_above(tmp_path):
    """Keras' layers 5 points lower (beyond the noise) on every seed but with some spread:
    the summary line gives the gap as a positive number, names the configuration, and
    notes differing parameter counts. Equal differences on two seeds read "on every seed"."""
    out = tmp_path / "runs"
    for seed, theirs in enumerate((0.85, 0.849, 0.851)):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        run = fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), theirs)
        _edit(run, params={"trainable": 1000, "non_trainable": 8})
    md = _md(out)
    assert ("every configuration's mean agrees within 0.0500 (5.00 points); beyond seed noise: GN. "
            "(Parameter counts differ for: GN.)") in md
    two = tmp_path / "two"
    for seed in range(2):
        fake_run(two, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
        fake_run(two, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), 0.901)
    assert "| +0.10 on every seed | 0: +0.10, 1: +0.10 | 0 of 2 |" in _md(two)


def test_ignored_runs_are_listed_up_to_twenty_then_counted():
    ignored = [dict(run_dir=f"runs/c/A/x/seed{i}", reason="training revision 0 (this report: 1)") for i in range(21)]
    lines = report_text._left_out([], {"ignored": ignored})
    assert lines[1] == "Ignored: 21 run(s), not summarized above:"
    assert lines[3:] == [f"- runs/c/A/x/seed{i}: training revision 0 (this report: 1)" for i in range(20)] + [
        "- and 1 more"]
    lines = report_text._left_out([], {"ignored": ignored[:20]})
    assert len(lines) == 23 and not lines[-1].startswith("- and")


def test_digits_runs_get_the_banner_without_a_fallback(tmp_path):
    out = tmp_path / "runs"
    fake_run(out, RunConfig(experiment="c", label="A", norms="none", dataset="digits"), 0.9)
    assert "\n**Dataset: scikit-learn's bundled 8x8 digits, not MNIST.**\n" in _md(out)
    assert report_text.dataset_line({"constant": {"dataset": "mnist"}}) == ""


def test_no_every_clause_when_the_only_rated_difference_has_no_interval(tmp_path):
    """B: +1 point on both seeds (no interval, sign-flip p = 0.5), C: one shared seed. No
    comparison has an interval, so the sentence says no "Every (other) paired 95% interval"."""
    out = tmp_path / "runs"
    for seed in range(2):
        for label, acc in (("A", 0.90), ("B", 0.91)):
            run = fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), acc + 0.01 * seed)
            _edit(run, test_examples=None)
    fake_run(out, RunConfig(experiment="c", label="C", norms="none", seed=0), 0.5)
    md = _md(out, "A")
    assert ("\nNo configuration differs from its baseline beyond the seed-to-seed noise, so the ranking of "
            "the means is within noise. No interval (fewer than two shared seeds where both runs finished): C. The same difference on "
            "every seed") in md
    assert "paired 95% interval includes 0" not in md


def test_the_tutorial_protocol_adds_the_held_out_accuracy(tmp_path):
    """Under the tutorial protocol the reported accuracy is a training one: the split not trained
    on gets a column of its own (here the summary's test_accuracy, 0.8) and a note says so."""
    out = tmp_path / "runs"
    run = fake_run(out, RunConfig(experiment="c", label="A", norms="none"), 0.9)
    _edit(run, metric="train (tutorial protocol)", test_accuracy=0.8)
    md = _md(out)
    assert "| config | seeds | train (tutorial protocol) acc % | 95% CI | train (tutorial protocol) loss | 95% CI " \
           "| held-out acc % | s/epoch |" in md
    assert _line(md, "| A |") == "| A | 1 | 90.00 | - | 0.1000 | - | 80.00 | 2.0 | 100 | 1,000 / 0 |"
    assert "held-out: the split not trained on." in md


def test_every_row_short_of_the_most_seeds_is_named(tmp_path):
    """Three seed counts (3, 2, 1): both rows below the most are named, not only the fewest."""
    out = tmp_path / "runs"
    for label, seeds in (("A", 3), ("B", 2), ("C", 1)):
        for seed in range(seeds):
            fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), 0.9)
    assert "Unequal seeds (1, 2, 3): B, C have fewer finished runs than the others" in _md(out)


def test_plain_text_underlines_level_four_headings_with_dashes():
    """Levels 1-3 ("### compare", the experiment) get "=", deeper ones ("#### Paired ...") "-"."""
    assert report_text.plain("### c\n#### Paired\n") == "c\n=\nPaired\n------\n"


def test_a_sweep_whose_runs_differ_in_epochs_and_steps_holds_nothing_fixed(tmp_path):
    """The points trained for other numbers of epochs: neither epochs nor optimizer steps were
    the same across the sweep, and the line says "nothing", not the first run's "epochs (1)"."""
    out = tmp_path / "runs"
    for groups, epochs in ((2, 1), (5, 2)):
        config = RunConfig(experiment="g", label=f"G={groups}", series="GN", sweep="groups", x=groups,
                           norms=f"group(groups={groups})", epochs=epochs)
        fake_run(out, config, 0.9)
    table = summarize(load_runs(out)[0])["g"]
    assert table["meta"]["held_fixed"] == ""
    assert "\nHeld fixed across the sweep: nothing.\n" in render_markdown("g", table)


def test_a_single_run_is_counted_in_the_singular(tmp_path):
    out = tmp_path / "runs"
    fake_run(out, RunConfig(experiment="c", label="A", norms="none"), 0.9)
    assert "; 1 run, 0.1 min total;" in _md(out)  # 3 s


def test_a_sweep_lists_no_specs_line(tmp_path):
    """A sweep's rows name their swept value, and its norms go to the notes; the "Specs:" line
    is a comparison's."""
    out = tmp_path / "runs"
    for b in (32, 8):
        fake_run(out, RunConfig(experiment="bs", label=f"BN b={b}", series="BN", sweep="batch size", x=b,
                                norms="batch", batch_size=b), 0.9)
    assert "Specs:" not in _md(out, name="bs")
    fake_run(out, RunConfig(experiment="c", label="BN", norms="batch"), 0.9)
    assert "\nSpecs: BN = `batch`.\n" in _md(out)


def test_the_train_mode_columns_show_when_any_row_has_them(tmp_path):
    """BN was also evaluated in training mode, GN (no batch statistics) was not: the columns
    and their note are there, with "-" in GN's cells."""
    out = tmp_path / "runs"
    for seed in range(2):
        fake_run(out, RunConfig(experiment="c", label="BN", norms="batch", seed=seed), 0.9, train_mode=0.84 + 0.02 * seed)
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), 0.9)
    md = _md(out)
    assert "| train-mode acc % | 95% CI | s/epoch |" in md
    # 85 +- t(0.975, 1) * 1.414 / sqrt(2) = 85 +- 12.71 points
    assert "| 85.00 ± 1.41 | [72.29, 97.71] | 2.0 |" in _line(md, "| BN |")
    assert "| - | - | 2.0 |" in _line(md, "| GN |")
    assert "Train-mode accuracy: the test set evaluated with training=True" in md


def test_the_verdict_sentence_counts_several_differences_within_noise(tmp_path):
    """A beyond the noise, B and C within it: "The other 2 differences are within noise."."""
    out = tmp_path / "runs"
    for seed in range(4):
        wobble = 0.01 if seed % 2 else -0.01
        for label, acc in (("base", 0.90), ("A", 0.95), ("B", 0.90 + wobble), ("C", 0.90 - wobble)):
            fake_run(out, RunConfig(experiment="c", label=label, norms="none", seed=seed), acc + 0.001 * seed)
    md = _md(out, "base")
    assert ("Beyond the seed noise (interval excluding 0): A higher by 5.00 points (p < 0.001). "
            "The other 2 differences are within noise. The p-values are not corrected") in md


def test_diverged_runs_are_named_in_seed_order(tmp_path):
    """The grid ran seed 2 before seed 0; both diverged: the note lists seed 0 first."""
    out = tmp_path / "runs"
    for index, seed in enumerate((2, 1, 0)):
        run = fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9, grid_index=index)
        if seed != 1:
            _edit(run, loss=None, non_finite=["loss"])
    assert "left out of their column's mean and interval): A seed 0 (loss); A seed 2 (loss)." in _md(out)


def test_the_settings_line_names_both_implementations(tmp_path):
    out = tmp_path / "runs"
    for t, impl in enumerate(("normlab", "keras")):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", impl=impl), 0.9, t=t)
    assert "; layers: normlab and keras; 2 runs," in _md(out)


def test_rows_of_one_seed_beside_rows_of_several_keep_the_interval_heading(tmp_path):
    out = tmp_path / "runs"
    for seed in range(3):
        fake_run(out, RunConfig(experiment="c", label="A", norms="none", seed=seed), 0.9)
    fake_run(out, RunConfig(experiment="c", label="B", norms="batch"), 0.9)
    md = _md(out)
    assert "Accuracy and loss: test split, mean ± std over seeds, 95% interval from the t-distribution." in md
    assert "one seed: no spread" not in md


def test_a_configuration_that_diverged_on_every_shared_seed_is_not_said_to_share_none(tmp_path):
    """B ran the baseline's seeds 0 and 1 and diverged on both: the report said "no common
    seeds" and that no configuration shares a seed with its baseline."""
    out = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(out, RunConfig(experiment="c", label="base", norms="none", seed=seed), 0.90 + 0.02 * seed)
        run = fake_run(out, RunConfig(experiment="c", label="B", norms="none", seed=seed), 0.5)
        _edit(run, accuracy=None, test_accuracy=None, non_finite=["accuracy"])
    md = _md(out, "base")
    assert "| B | base | 0 | - | - | diverged on every shared seed |" in md
    assert ("No configuration can be compared seed by seed with its baseline: on every shared seed one of "
            "the two runs diverged (listed below), or no seed is shared.") in md
    assert "shares a seed" not in md


def test_the_closing_note_gives_the_reason_of_each_run_whose_files_disagree():
    """The note named unused runs by path only: a run copied into another seed's folder or
    edited by hand now comes with why it was left out (the first 20, the rest counted)."""
    assert report_text.unused_note([]) == ""
    unused = [(f"runs/c/A/v/seed{i}", "" if i == 0 else f"summary.json holds seed 0's run, in the folder seed{i}")
              for i in range(23)]
    lines = report_text.unused_note(unused).splitlines()
    assert lines[1] == "23 unfinished or unreadable run(s) ignored: " + ", ".join(p for p, _ in unused)
    assert lines[3].startswith("Of these, 22 finished with files that disagree (copied from another run's folder")
    assert lines[5:] == [f"- runs/c/A/v/seed{i}: summary.json holds seed 0's run, in the folder seed{i}"
                         for i in range(1, 21)] + ["- and 2 more"]
