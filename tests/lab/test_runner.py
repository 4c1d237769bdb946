"""The grid runner: run directories, resume after interruption, seeding, protocols."""

import dataclasses
import json
import os
import platform
import shutil

import numpy as np
import pytest

from normlab.lab import runner
from normlab.lab.data import load_dataset
from normlab.lab.experiments import Experiment, RunConfig
from normlab.lab.report import write_report
from normlab.lab.runner import RunnerError, run_dir_for, run_grid, split_data

TINY = dict(dataset="synthetic", max_steps=3, test_subset=32, batch_size=16, eval_batch_size=32,
            train_mode_eval=True)


def tiny_experiment(**overrides) -> Experiment:
    configs = (RunConfig(experiment="tiny", label="BN", norms="batch(axis=3)", **TINY),
               RunConfig(experiment="tiny", label="GN", norms="group(groups=5, axis=3)",
                         **{**TINY, "train_mode_eval": False}))
    return Experiment("tiny", "tiny", configs, seeds=(0,)).replace(**overrides)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One small grid (2 norms x 1 seed), run once for the module (compiling is the slow part)."""
    out = tmp_path_factory.mktemp("runs")
    results = run_grid(tiny_experiment(), out, progress=False)
    return out, results


def test_grid_writes_one_directory_per_run(grid):
    out, results = grid
    assert [r.status for r in results] == ["done"] * 2
    assert [(r.config.label, r.config.seed) for r in results] == [("BN", 0), ("GN", 0)]
    for i, r in enumerate(results):
        assert r.run_dir == out / "tiny" / r.config.label / f"seed{r.config.seed}"
        assert json.loads((r.run_dir / "config.json").read_text()) == r.config.to_dict()
        lines = (r.run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["steps"] == 3
        summary = json.loads((r.run_dir / "summary.json").read_text())
        assert summary == r.summary
        assert summary["steps"] == 3 and summary["examples_seen"] == 48
        assert summary["metric"] == "test" and summary["accuracy"] == summary["test_accuracy"]
        assert 0.0 <= summary["accuracy"] <= 1.0 and summary["loss"] > 0
        assert summary["wall_time_s"] > 0 and summary["seconds_per_epoch"] > 0
        assert summary["grid_index"] == i
        assert summary["worker"] == dict(executor="local", host=platform.node(), pid=os.getpid())
        assert not [p for p in r.run_dir.iterdir() if p.name.endswith(".tmp")]
    bn, gn = results[0].summary, results[1].summary
    assert bn["params"]["non_trainable"] == 20 and gn["params"]["non_trainable"] == 0
    assert bn["params"]["trainable"] == gn["params"]["trainable"]
    assert bn["train_mode_accuracy"] is not None and gn["train_mode_accuracy"] is None


def test_report_from_the_grid(grid, tmp_path):
    out, _ = grid
    written = write_report(out, tmp_path)
    assert sorted(p.name for p in written) == [
        "report.md", "tiny.csv", "tiny.json", "tiny.md", "tiny.png"]
    assert "| BN | 1 |" in (tmp_path / "tiny.md").read_text()


def test_rerun_skips_finished_runs_and_redoes_interrupted_ones(grid, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(grid[0], out)
    interrupted = run_dir_for(out, RunConfig(experiment="tiny", label="GN", seed=0))
    (interrupted / "summary.json").unlink()  # as if killed before the summary was written
    (interrupted / "metrics.jsonl").write_text('{"partial": true}\n')
    finished = sorted(out.rglob("summary.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    calls = []
    real_run_one = runner.run_one
    monkeypatch.setattr(runner, "run_one", lambda c, *a, **k: calls.append(c) or real_run_one(c, *a, **k))

    results = run_grid(tiny_experiment(), out, progress=False)

    assert [(c.label, c.seed) for c in calls] == [("GN", 0)]
    assert [r.status for r in results] == ["skipped", "done"]
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    assert "partial" not in (interrupted / "metrics.jsonl").read_text()
    assert (interrupted / "summary.json").is_file()
    # Same seed, same backend, same process: the redone run reproduces the original numbers.
    original = grid[1][1].summary
    for key in ("loss", "accuracy", "train_loss", "train_accuracy"):
        assert results[1].summary[key] == original[key], key


def test_a_changed_config_is_refused_before_anything_runs(grid):
    out, results = grid
    new = RunConfig(experiment="tiny", label="new", **TINY)
    changed = dataclasses.replace(results[1].config, learning_rate=0.5)
    with pytest.raises(RunnerError, match="differs in learning_rate"):
        run_grid([new, changed], out, progress=False)
    assert not run_dir_for(out, new).exists()


def test_max_steps_spans_epochs_and_protocols_swap_splits(tmp_path):
    config = RunConfig(experiment="t", norms="none", dataset="synthetic", train_subset=40,
                       batch_size=16, max_steps=5, test_subset=30, eval_batch_size=32,
                       protocol="tutorial")
    dataset = load_dataset("synthetic")
    x_train, y_train, x_test, y_test = split_data(config, dataset)
    np.testing.assert_array_equal(x_train, dataset.x_test[:40])
    np.testing.assert_array_equal(y_test, dataset.y_train[:30])
    summary = runner.run_one(config, tmp_path / "run", dataset)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["steps"] for line in lines] == [3, 5]  # 3 steps per pass over 40 images
    assert summary["metric"] == "train (tutorial protocol)"
    assert summary["accuracy"] == summary["train_accuracy"]
    assert summary["train_mode_accuracy"] is None


def test_train_mode_evaluation_restores_moving_statistics():
    import keras

    from normlab.lab.models import build_model

    model = build_model("batch", (8, 8, 1))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(5.0, 2.0, (32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 10
    before = [np.array(v.value) for v in model.non_trainable_variables]
    train_mode = runner.evaluate_train_mode(model, x, y, batch_size=8)
    after = [np.array(v.value) for v in model.non_trainable_variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    eval_mode = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert train_mode["loss"] != pytest.approx(eval_mode["loss"])  # batch stats differ
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.2]


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "summary.json"
    runner.write_json_atomic(path, {"a": 1})
    runner.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["summary.json"]
