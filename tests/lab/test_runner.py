"""The grid runner and training: run directories, resume after interruption, seeding, protocols."""

import dataclasses
import json
import os
import platform
import shutil

import keras
import numpy as np
import pytest

import normlab
from normlab.lab import store, training
from normlab.lab.data import load_dataset
from normlab.lab.experiments import Experiment, RunConfig
from normlab.lab.report import write_report
from normlab.lab.runner import RunnerError, run_grid
from normlab.lab.store import StoreError, run_dir_for
from normlab.lab.training import split_data

BACKEND = keras.backend.backend()

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
        assert r.config.backend == BACKEND  # filled in from Keras
        assert r.run_dir == out / "tiny" / r.config.label / r.config.variant / f"seed{r.config.seed}"
        assert r.config.variant.startswith(f"{BACKEND}-normlab-")
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
        # which normlab made it, installed from a wheel too (no git checkout to read a revision from)
        assert summary["versions"]["normlab"] == normlab.__version__ and "keras" in summary["versions"]
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
    gn = next(c for c in tiny_experiment().grid() if c.label == "GN")
    interrupted = run_dir_for(out, dataclasses.replace(gn, backend=BACKEND))
    (interrupted / "summary.json").unlink()  # as if killed before the summary was written
    (interrupted / "metrics.jsonl").write_text('{"partial": true}\n')
    finished = sorted(out.rglob("summary.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    calls = []
    real_run_one = training.run_one
    monkeypatch.setattr(training, "run_one", lambda c, *a, **k: calls.append(c) or real_run_one(c, *a, **k))

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


def test_a_run_finished_for_another_experiment_is_copied_not_trained(grid, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(grid[0], out)
    calls = []
    monkeypatch.setattr(training, "run_one", lambda c, *a, **k: calls.append(c))
    said = []
    # The other grid lists the configurations in the opposite order.
    other = Experiment("other", "other", tuple(dataclasses.replace(c, experiment="other", label=c.label + "2")
                                               for c in reversed(tiny_experiment().configs)), seeds=(0,))
    results = run_grid(other, out, progress=False, say=said.append)
    assert calls == [] and [r.status for r in results] == ["skipped", "skipped"]
    assert all("copied" in line for line in said)
    for index, (result, original) in enumerate(zip(results, reversed(grid[1]))):
        assert result.run_dir == out / "other" / (original.config.label + "2") / original.run_dir.parent.name / "seed0"
        assert result.summary["accuracy"] == original.summary["accuracy"]
        assert result.summary["config"]["experiment"] == "other"
        assert result.summary["grid_index"] == index  # its place in its own grid, not the source's
        assert result.summary["copied_from"] == original.run_dir.relative_to(grid[0]).as_posix()
    write_report(out, tmp_path / "report")
    assert "| BN2 | 1 |" in (tmp_path / "report" / "other.md").read_text()


def test_other_settings_get_other_directories(grid, tmp_path):
    out, results = grid
    changed = dataclasses.replace(results[1].config, learning_rate=0.5)
    assert run_dir_for(out, changed) != results[1].run_dir  # never the same directory
    assert store.plan([changed], out)[0].action == "run"
    assert store.plan([results[1].config], out)[0].action == "reuse"


def test_an_edited_finished_run_is_refused_before_anything_runs(grid, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(grid[0], out)
    _, gn = grid[1]
    config_path = run_dir_for(out, gn.config) / "config.json"
    edited = {**json.loads(config_path.read_text()), "learning_rate": 0.5}
    config_path.write_text(json.dumps(edited))
    new = RunConfig(experiment="tiny", label="new", backend=BACKEND, **TINY)
    with pytest.raises(StoreError, match="differs in learning_rate"):
        run_grid([new, gn.config], out, progress=False)
    assert not run_dir_for(out, new).exists()


def test_a_config_for_another_backend_is_refused(tmp_path):
    other = next(b for b in ("jax", "torch", "tensorflow") if b != BACKEND)
    with pytest.raises(RunnerError, match=f"Received: backend='{other}'"):
        run_grid([RunConfig(backend=other, **TINY)], tmp_path, progress=False)


def test_max_steps_spans_epochs_and_protocols_swap_splits(tmp_path):
    config = RunConfig(experiment="t", norms="none", dataset="synthetic", train_subset=40,
                       batch_size=16, max_steps=5, test_subset=30, eval_batch_size=32,
                       protocol="tutorial")
    dataset = load_dataset("synthetic")
    x_train, y_train, x_test, y_test = split_data(config, dataset)
    np.testing.assert_array_equal(x_train, dataset.x_test[:40])
    np.testing.assert_array_equal(y_test, dataset.y_train[:30])
    summary = training.run_one(config, tmp_path / "run", dataset)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["steps"] for line in lines] == [3, 5]  # 3 steps per pass over 40 images
    # s/epoch: the time of an epoch's worth of examples (40), not the mean of a full and a cut epoch (32)
    assert [line["examples"] for line in lines] == [40, 32]
    fit = [line["fit_seconds"] for line in lines]
    assert summary["seconds_per_epoch"] == pytest.approx(sum(fit) * 40 / 72)
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
    before = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    train_mode = training.evaluate_train_mode(model, x, y, batch_size=8)
    after = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    eval_mode = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert train_mode["loss"] != pytest.approx(eval_mode["loss"])  # batch stats differ
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.2]


def test_a_diverged_run_writes_standard_json(tmp_path):
    config = RunConfig(experiment="t", norms="none", dataset="synthetic", max_steps=3,
                       test_subset=32, batch_size=16, eval_batch_size=32, learning_rate=1e12)
    summary = training.run_one(config, tmp_path / "run", load_dataset("synthetic"))
    text = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    if summary.get("non_finite"):  # diverged, as expected at this learning rate
        assert summary["loss"] is None and "loss" in summary["non_finite"]


def test_impl_keras_starts_from_normlabs_weights_and_dropout(tmp_path):
    """Random beta/gamma initializers draw differently in the two layers; the run copies
    normlab's initial weights, so only the layers' computations differ."""
    spec = "instance(axis=3, beta_initializer='random_uniform', gamma_initializer='random_uniform')"
    base = RunConfig(experiment="t", norms=spec, dataset="synthetic", max_steps=3, test_subset=32,
                     batch_size=16, eval_batch_size=32, seed=1)
    dataset = load_dataset("synthetic")
    ours = training.run_one(base, tmp_path / "normlab", dataset)
    theirs = training.run_one(dataclasses.replace(base, impl="keras"), tmp_path / "keras", dataset)
    assert theirs["params"] == ours["params"]
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-4)
    assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-4)


class _Replay:
    """Trains nothing: hands back each run's summary (None: lost) in the reverse of the grid's
    order, as a parallel executor may finish them."""

    name = "replay"

    def __init__(self, summaries):
        self.summaries = summaries

    def describe(self) -> str:
        return "replay executor"

    def run(self, todo, **kwargs):
        from normlab.lab.executors import Outcome

        for config, run_dir, index in reversed(todo):
            summary = self.summaries[config.label]
            yield Outcome(config, run_dir, index, summary, "" if summary else "worker died\nTraceback ...")


def _summary(**changes):
    return {**dict(metric="test", accuracy=0.9, loss=0.25, wall_time_s=1.5,
                   worker=dict(executor="replay", host="node-7")), **changes}


def test_results_and_progress_lines_follow_the_grid(tmp_path):
    """A reused run between runs an executor finishes out of order: the results come back in grid
    order, and each line counts from 1 and names the run (Keras' layers marked)."""
    from tests.lab.test_report import fake_run

    configs = [RunConfig(experiment="c", label=label, norms="batch", backend="jax", impl=impl)
               for label, impl in (("A", "normlab"), ("B", "normlab"), ("C", "keras"), ("D", "normlab"))]
    fake_run(tmp_path, configs[1], 0.8)
    said = []
    summaries = {"A": _summary(), "C": _summary(loss=None, non_finite=["loss"]), "D": None}
    results = run_grid(configs, tmp_path, progress=False, say=said.append, executor=_Replay(summaries))
    assert [(r.config.label, r.status) for r in results] == [("A", "done"), ("B", "skipped"), ("C", "done"),
                                                              ("D", "lost")]
    assert results[3].error.startswith("worker died") and results[3].summary == {}
    assert said == [
        "[2/4] c/B/seed0: finished earlier, reused",
        "3 runs on the replay executor",
        "[4/4] c/D/seed0: LOST (worker died); the next invocation redoes it",
        "[3/4] c/C/seed0 [keras]: test accuracy 0.9000, loss nan (1.5 s on node-7)",
        "[3/4] c/C/seed0 [keras]: warning: training diverged (loss not finite, stored as null); try a smaller --lr",
        "[1/4] c/A/seed0: test accuracy 0.9000, loss 0.2500 (1.5 s on node-7)",
    ]


def test_with_backend_fills_in_only_the_configurations_without_one():
    from normlab.lab.runner import with_backend

    configs = [RunConfig(label="a", backend="torch"), RunConfig(label="b")]
    assert [c.backend for c in with_backend(configs, "jax")] == ["torch", "jax"]
    assert [c.backend for c in with_backend(configs[:1], "jax")] == ["torch"]
