"""Reports on folders that hold more than one clean grid: several backends,
older training revisions, copied runs, unfinished seeds, diverged runs."""

import json

import pytest

from normlab.lab import plots
from normlab.lab.experiments import RunConfig
from normlab.lab.report import load_runs, render_markdown, summarize, write_report
from tests.lab.test_report import fake_run


def _grid(out, accuracies, *, backend="jax", seeds=(0, 1, 2), experiment="c", **fields):
    for seed in seeds:
        for label, acc in accuracies.items():
            config = RunConfig(experiment=experiment, label=label, norms=label, seed=seed,
                               backend=backend, **fields)
            fake_run(out, config, acc + 0.01 * seed * (label == "group"), t=seed)


def _edit(run_dir, **changes):
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_baseline_names_a_configuration_on_every_backend(tmp_path):
    out = tmp_path / "runs"
    for backend in ("jax", "torch"):
        _grid(out, {"batch": 0.90, "group": 0.80, "none": 0.70}, backend=backend)
    table = summarize(load_runs(out)[0], baseline="group")["c"]
    paired = {r["label"]: r["paired"] and r["paired"]["baseline"] for r in table["rows"]}
    assert paired == {"batch (jax)": "group (jax)", "batch (torch)": "group (torch)", "group (jax)": None,
                      "group (torch)": None, "none (jax)": "group (jax)", "none (torch)": "group (torch)"}
    assert "#### Paired differences against group" in render_markdown("c", table)


def test_runs_of_an_older_training_revision_are_listed_not_paired(tmp_path):
    out = tmp_path / "runs"
    _grid(out, {"batch": 0.90, "group": 0.80})
    old = tmp_path / "old"  # the same grid under another revision: other initial weights
    _grid(old, {"batch": 0.50, "group": 0.80}, learning_rate=0.002)
    for run in load_runs(old)[0]:
        _edit(tmp_path / run["run_dir"], training_revision=-1, finished_at="2024-01-01T00:00:00")
    mixed = load_runs(out)[0] + load_runs(old)[0]
    table = summarize(mixed)["c"]
    assert [r["label"] for r in table["rows"]] == ["batch", "group"]
    assert len(table["meta"]["ignored"]) == 6
    assert {i["reason"] for i in table["meta"]["ignored"]} == {"training revision -1 (this report: 0)"}
    assert table["rows"][1]["paired"]["mean"] < 0  # against the current batch runs (0.90), not 0.50
    md = render_markdown("c", table)
    assert "Ignored: 6 run(s), not summarized above:" in md


def test_a_copied_folder_counts_each_seed_once(tmp_path):
    out = tmp_path / "runs"
    _grid(out / "a", {"batch": 0.90}, seeds=(0, 1))
    _grid(out / "b", {"batch": 0.90}, seeds=(0, 1))
    table = summarize(load_runs(out)[0])["c"]
    (row,) = table["rows"]
    assert row["seeds"] == [0, 1] and row["accuracy"]["n"] == 2
    assert [i["reason"].split(" as ")[0] for i in table["meta"]["ignored"]] == ["the same run"] * 2


def test_variants_pair_only_with_the_baseline_of_the_same_settings(tmp_path):
    out = tmp_path / "runs"
    _grid(out, {"batch": 0.90, "group": 0.80}, epochs=1)
    _grid(out, {"group": 0.85}, epochs=2)  # group also ran for two epochs; batch did not
    table = summarize(load_runs(out)[0])["c"]
    by_label = {r["label"]: r for r in table["rows"]}
    assert len(by_label) == 3
    one, two = (by_label[label] for label in sorted(by_label) if label.startswith("group"))
    paired = [r for r in (one, two) if r["paired"]]
    assert len(paired) == 1 and paired[0]["paired"]["mean"] < -0.05  # 0.80 against 0.90, epochs=1
    assert "Not paired (no baseline run on the same backend with the same settings)" in render_markdown("c", table)


def test_a_comparison_without_an_interval_is_not_called_within_noise(tmp_path):
    out = tmp_path / "runs"
    _grid(out, {"batch": 0.90})
    for seed, acc in enumerate((0.70, 0.71, 0.69)):
        _grid(out, {"none": acc}, seeds=(seed,))
    _grid(out, {"group": 0.80}, seeds=(0,))
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "beyond the seed noise" in md.lower()
    assert "No interval (fewer than two shared seeds where both runs finished): group." in md
    assert "Every paired 95% interval" not in md


def test_no_shared_seed_is_said_as_such(tmp_path):
    out = tmp_path / "runs"
    _grid(out, {"batch": 0.90}, seeds=(0, 1))
    _grid(out, {"group": 0.80}, seeds=(2, 3))
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "No configuration shares a seed with its baseline" in md


def test_the_keras_comparison_uses_only_the_seeds_both_ran(tmp_path):
    out = tmp_path / "runs"
    for seed, (mine, theirs) in enumerate([(0.90, 0.90), (0.80, None), (0.70, 0.70)]):
        fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed), mine)
        if theirs is not None:
            fake_run(out, RunConfig(experiment="c", label="GN", norms="group", seed=seed, impl="keras"), theirs)
    table = summarize(load_runs(out)[0])["c"]
    (ab,) = table["ab"]
    assert ab["main"]["n"] == ab["other"]["n"] == 2 and ab["main"]["mean"] == ab["other"]["mean"]
    assert "every configuration's mean is the same" in render_markdown("c", table)


def test_a_diverged_run_is_named_and_its_column_counts_the_rest(tmp_path):
    out = tmp_path / "runs"
    _grid(out, {"batch": 0.90})
    run_dir = next(r for r in load_runs(out)[0] if r["config"]["seed"] == 1)["run_dir"]
    _edit(tmp_path / run_dir, loss=None, test_loss=None, non_finite=["loss", "test_loss"])
    md = render_markdown("c", summarize(load_runs(out)[0])["c"])
    assert "| batch | 3 | " in md and " (n=2) |" in md
    assert "Diverged (non-finite values" in md and "batch seed 1 (loss, test_loss)" in md


def test_a_sweep_plot_draws_the_other_implementation(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for b in (32, 2):
        for impl in ("normlab", "keras"):
            for seed in (0, 1):
                config = RunConfig(experiment="bs", label=f"GN b={b}", series="GN", sweep="batch size", x=b,
                                   norms="group", batch_size=b, seed=seed, impl=impl)
                fake_run(out, config, 0.9)
    drawn = []
    real = plots._point
    monkeypatch.setattr(plots, "_point", lambda ax, x, s, per_seed, color, marker, filled:
                        drawn.append(marker) or real(ax, x, s, per_seed, color, marker, filled))
    write_report(out, tmp_path / "report")
    assert drawn.count("o") == 2 and drawn.count("D") == 2


def _strips_apart(ax) -> bool:
    """Whether no two x tick labels of ``ax`` overlap, as drawn (level: boxes apart;
    tilted: parallel strips farther apart than a label's height)."""
    import math

    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    renderer = ax.figure.canvas.get_renderer()
    angle = labels[0].get_rotation()
    boxes = [t.get_window_extent(renderer) for t in labels]
    if angle == 0:
        return all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    ticks = ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0]
    spacing = min(b - a for a, b in zip(ticks, ticks[1:]))
    level = [t.get_window_extent(renderer) for t in labels if t.set_rotation(0) or True]
    for t in labels:
        t.set_rotation(angle)
    return spacing * math.sin(math.radians(angle)) >= 1.5 * max(b.height for b in level)


@pytest.mark.parametrize("backends", [("jax",), ("jax", "tensorflow", "torch")])
def test_plot_tick_labels_do_not_overlap(tmp_path, backends):
    """Every backend's rows of a mixed-backend folder ("InstanceNorm (tensorflow)", ...)
    overlapped at the fixed 15-degree tilt."""

    out = tmp_path / "runs"
    for backend in backends:
        _grid(out, {"group": 0.9, "instance": 0.8, "layer(axis=[1, 2, 3])": 0.85, "batch": 0.9,
                    "none": 0.7}, backend=backend)
    table = summarize(load_runs(out)[0])["c"]
    fig = plots.figure("c", table)
    try:
        for ax in fig.axes:
            assert _strips_apart(ax)
            assert len([t for t in ax.get_xticklabels() if t.get_text()]) == 5 * len(backends)
        assert fig.axes[0].get_xticklabels()[0].get_rotation() == (15 if len(backends) == 1 else 45)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_a_paired_interval_is_drawn_cut_at_100_points_as_its_cell_shows():
    """The table cuts a difference of accuracies at +-100 points ("+11.33 [-86.08, +100.00]*");
    the plot drew the bar on to +108.7."""
    plt = plots._pyplot()
    figure, dx = plt.subplots()
    try:
        d = dict(n=2, diffs=[0.05, 0.1766], mean=0.1133, ci95=0.9741, low=0.1133 - 0.9741, high=0.1133 + 0.9741)
        assert max(plots._diff(dx, 0, d, "C0")) == 100.0
        ((bar,),) = [c.lines[2] for c in dx.containers]
        (((_, bottom), (_, top)),) = bar.get_segments()
        assert (bottom, top) == (pytest.approx(-86.08), pytest.approx(100.0))
    finally:
        plt.close(figure)
