"""Run directories: layout keyed by settings, atomic writes, standard JSON, the output lock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.lab import store
from normlab.lab.experiments import RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_result_setting_changes_the_directory(tmp_path):
    base = RunConfig(label="BN", norms="batch", backend="jax")
    changes = dict(protocol="tutorial", train_subset=10, test_subset=10, epochs=2, max_steps=5,
                   batch_size=8, learning_rate=0.01, impl="keras", backend="torch", dataset="digits",
                   arch="deep", norms="batch>none", train_mode_eval=True, eval_batch_size=64)
    dirs = {store.run_dir_for(tmp_path, base)}
    for key, value in changes.items():
        changed = RunConfig(**{**base.to_dict(), key: value})
        dirs.add(store.run_dir_for(tmp_path, changed))
    assert len(dirs) == len(changes) + 1
    # Naming fields and the seed do not change the settings' directory.
    renamed = RunConfig(**{**base.to_dict(), "series": "S", "x": 3.0})
    assert store.run_dir_for(tmp_path, renamed) == store.run_dir_for(tmp_path, base)
    assert store.run_dir_for(tmp_path, base).parent.name == base.variant


def test_atomic_writes_have_ordinary_permissions_and_standard_json(tmp_path):
    path = tmp_path / "summary.json"
    store.write_json_atomic(path, {"a": 1})
    store.write_json_atomic(path, {"a": float("nan"), "b": [float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None]}
    assert os.listdir(tmp_path) == ["summary.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_finish_run_lists_non_finite_values(tmp_path):
    store.begin_run(tmp_path / "r", RunConfig())
    summary = store.finish_run(tmp_path / "r", {"loss": float("nan"), "accuracy": 0.1})
    assert summary == {"loss": None, "accuracy": 0.1, "non_finite": ["loss"]}
    store.write_metrics(tmp_path / "r", [{"epoch": 1, "train_loss": float("inf")}])
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == '{"epoch": 1, "train_loss": null}\n'


def test_plan_run_reuse_redo(tmp_path):
    from tests.lab.test_report import fake_run

    configs = [RunConfig(label=name, backend="jax", seed=0) for name in ("a", "b", "c", "d")]
    fake_run(tmp_path, configs[1], 1.0)
    store.begin_run(store.run_dir_for(tmp_path, configs[2]), configs[2])  # interrupted
    store.begin_run(store.run_dir_for(tmp_path, configs[3]), configs[3])
    store.finish_run(store.run_dir_for(tmp_path, configs[3]), {"accuracy": 1.0})  # not what a run writes
    assert [p.action for p in store.plan(configs, tmp_path)] == ["run", "reuse", "redo", "redo"]


def test_plan_copies_the_same_run_finished_for_another_experiment(tmp_path):
    from tests.lab.test_report import fake_run

    compare = RunConfig(experiment="compare", label="GroupNorm", norms="group(groups=5)", backend="jax", seed=1)
    groups = RunConfig(**{**compare.to_dict(), "experiment": "groups", "label": "G=5", "series": "G", "x": 5.0})
    other_seed = RunConfig(**{**groups.to_dict(), "seed": 2})
    other_norm = RunConfig(**{**groups.to_dict(), "norms": "group(groups=2)"})
    source = fake_run(tmp_path, compare, 0.9)
    (source / "metrics.jsonl").write_text('{"epoch": 1}\n')
    planned = store.plan([groups, other_seed, other_norm], tmp_path)
    assert [p.action for p in planned] == ["copy", "run", "run"]
    assert planned[0].source == source and planned[0].summary["accuracy"] == 0.9

    summary = store.copy_run(source, planned[0].run_dir, groups, tmp_path)
    assert summary["copied_from"] == "compare/GroupNorm/" + compare.variant + "/seed1"
    assert summary["config"] == groups.to_dict() and summary["accuracy"] == 0.9
    copied = store.run_dir_for(tmp_path, groups)
    assert json.loads((copied / "config.json").read_text()) == groups.to_dict()
    assert (copied / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert store.read_finished(copied) == summary
    assert [p.action for p in store.plan([groups], tmp_path)] == ["reuse"]
    assert json.loads((source / "summary.json").read_text())["config"] == compare.to_dict()  # untouched


def test_a_model_without_norms_is_copied_across_implementations(tmp_path):
    from tests.lab.test_report import fake_run

    ours = RunConfig(experiment="compare", label="none", norms="none", backend="jax", seed=1)
    theirs = RunConfig(**{**ours.to_dict(), "impl": "keras"})
    fake_run(tmp_path, ours, 0.8)
    planned = store.plan([theirs], tmp_path)  # --impl keras after --impl normlab, same experiment
    assert planned[0].action == "copy" and planned[0].source == store.run_dir_for(tmp_path, ours)
    summary = store.copy_run(planned[0].source, planned[0].run_dir, theirs, tmp_path)
    assert summary["config"]["impl"] == "keras" and summary["accuracy"] == 0.8
    normed = [RunConfig(**{**c.to_dict(), "norms": "batch", "label": "BN"}) for c in (ours, theirs)]
    fake_run(tmp_path, normed[0], 0.9)
    assert store.plan([normed[1]], tmp_path)[0].action == "run"  # a norm makes the implementations differ


def test_plan_names_a_finished_run_whose_config_is_missing(tmp_path):
    """It said the missing config.json "differs in" every field."""
    from tests.lab.test_report import fake_run

    config = RunConfig(label="a", backend="jax", seed=0)
    run_dir = fake_run(tmp_path, config, 1.0)
    for content in (None, "[1, 2]"):
        if content is None:
            (run_dir / "config.json").unlink()
        else:
            (run_dir / "config.json").write_text(content)
        with pytest.raises(store.StoreError, match=r"a finished run whose config.json is missing or not a JSON "
                                                   r"object\. Delete that run directory to redo it"):
            store.plan([config], tmp_path)


def test_plan_refuses_a_seed_folder_holding_another_seeds_run(tmp_path):
    """seed0 copied to seed1 was "finished earlier, reused" as seed 1 (the check left the seed out)."""
    import shutil

    from tests.lab.test_report import fake_run

    seeds = [RunConfig(label="a", backend="jax", seed=s) for s in (0, 1)]
    source = fake_run(tmp_path, seeds[0], 0.9)
    shutil.copytree(source, store.run_dir_for(tmp_path, seeds[1]))
    with pytest.raises(store.StoreError, match=r"Received: a finished run whose config.json differs in seed\. "
                                               r"Delete that run directory to redo it"):
        store.plan(seeds, tmp_path)


def test_plan_refuses_a_run_whose_summary_disagrees_with_its_config_json(tmp_path):
    """The report lists such a run as inconsistent, so the grid does not reuse it either."""
    from tests.lab.test_report import fake_run

    config = RunConfig(label="a", backend="jax", seed=0)
    run_dir = fake_run(tmp_path, config, 0.9)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["label"] = "b"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(store.StoreError, match=r"a finished run whose config.json differs from summary.json's "
                                               r"config in label\. Delete that run directory to redo it"):
        store.plan([config], tmp_path)


def test_plan_copies_no_twin_from_a_seed_folder_holding_another_seeds_run(tmp_path):
    """compare's seed0 copied to its seed1 was copied on as groups' seed 1."""
    import shutil

    from tests.lab.test_report import fake_run

    compare = RunConfig(experiment="compare", label="GroupNorm", norms="group(groups=5)", backend="jax", seed=0)
    groups = RunConfig(**{**compare.to_dict(), "experiment": "groups", "label": "G=5", "seed": 1})
    source = fake_run(tmp_path, compare, 0.9)
    shutil.copytree(source, source.parent / "seed1")
    assert store.plan([groups], tmp_path)[0].action == "run"
    assert store.find_twin(tmp_path, groups) is None


def test_plan_copies_no_unfinished_or_edited_twin(tmp_path):
    from tests.lab.test_report import fake_run

    compare = RunConfig(experiment="compare", label="GroupNorm", norms="group(groups=5)", backend="jax", seed=1)
    groups = RunConfig(**{**compare.to_dict(), "experiment": "groups", "label": "G=5"})
    fake_run(tmp_path, compare, 0.9, finished=False)
    assert store.plan([groups], tmp_path)[0].action == "run"
    edited = RunConfig(**{**compare.to_dict(), "experiment": "other"})
    run_dir = fake_run(tmp_path, edited, 0.9)
    stored = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**stored, "learning_rate": 0.5}))
    assert store.plan([groups], tmp_path)[0].action == "run"
    with pytest.raises(store.StoreError, match="expected a finished run"):
        store.copy_run(store.run_dir_for(tmp_path, compare), store.run_dir_for(tmp_path, groups), groups,
                       tmp_path)


def test_check_out(tmp_path, monkeypatch):
    assert store.check_out(tmp_path / "new" / "runs") == tmp_path / "new" / "runs"
    assert not (tmp_path / "new").exists()  # creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(store.StoreError, match="is a file"):
        store.check_out(tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probe folder is gone


def test_check_out_tries_making_a_folder(tmp_path, monkeypatch):
    """os.access says yes to root everywhere (/proc, a read-only mount): an --out there
    passed the check, and the run failed later with a traceback."""
    def refuse(**kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkdtemp", refuse)
    with pytest.raises(store.StoreError, match=r"Invalid `out`: .*no folder can be made .*Read-only file system"):
        store.check_out(tmp_path / "runs")


def test_lock_names_its_holder_across_processes(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from normlab.lab.store import OutputLock; "
         f"lock = OutputLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(store.LockedError, match=f"in use by process {holder.pid} on"):
            store.OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with store.OutputLock(tmp_path):  # released by the kernel when the holder died
        pass


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    store.write_json_atomic(path, {"a": 1})

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        store.write_json_atomic(path, {"a": 2})
    assert os.listdir(tmp_path) == ["summary.json"] and json.loads(path.read_text()) == {"a": 1}


def test_non_finite_values_are_listed_by_their_path_in_nested_records(tmp_path):
    store.begin_run(tmp_path / "r", RunConfig())
    summary = store.finish_run(tmp_path / "r", {"accuracy": 0.5, "history": {"loss": [0.9, float("nan")]},
                                                "eval": {"train_mode": {"loss": float("-inf")}}})
    assert summary["non_finite"] == ["history.loss[1]", "eval.train_mode.loss"]
    assert summary["history"] == {"loss": [0.9, None]} and summary["eval"] == {"train_mode": {"loss": None}}


def test_dumps_sorts_keys_and_writes_tuples_as_standard_json_lists():
    text = store.dumps({"b": (1.0, float("inf")), "a": {"d": 1, "c": 2}})
    assert text == json.dumps({"a": {"c": 2, "d": 1}, "b": [1.0, None]}, indent=2, sort_keys=True) + "\n"
    assert list(json.loads(text)) == ["a", "b"]


@pytest.mark.parametrize("key", ["experiment", "label", "series", "sweep", "x", "norms", "seed", "dataset",
                                 "protocol", "arch", "epochs", "max_steps", "batch_size", "learning_rate",
                                 "train_subset"])
def test_a_summary_whose_config_lacks_a_field_the_report_reads_is_unfinished(tmp_path, key):
    from tests.lab.test_report import fake_run

    run_dir = fake_run(tmp_path, RunConfig(label="a", backend="jax"), 0.9)
    assert store.read_finished(run_dir) is not None
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["config"][key]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert store.read_finished(run_dir) is None


@pytest.mark.parametrize("params", [{}, {"trainable": 10}, {"non_trainable": 0}])
def test_a_summary_without_both_parameter_counts_is_unfinished_not_an_error(tmp_path, params):
    from tests.lab.test_report import fake_run

    run_dir = fake_run(tmp_path, RunConfig(label="a", backend="jax"), 0.9)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "params": params}))
    assert store.read_finished(run_dir) is None
    assert store.load_runs(tmp_path) == ([], [run_dir])


def test_a_clean_summary_lists_no_non_finite_values(tmp_path):
    store.begin_run(tmp_path / "r", RunConfig())
    assert store.finish_run(tmp_path / "r", {"loss": 0.5, "accuracy": 0.1}) == {"loss": 0.5, "accuracy": 0.1}
    assert "non_finite" not in json.loads((tmp_path / "r" / "summary.json").read_text())


def test_a_copy_leaves_out_the_sources_hidden_and_error_files(tmp_path):
    """A temporary file left by a killed write (``.metrics.jsonl.x.tmp``) and ``error.txt`` are the
    source's own: the copy gets its other files."""
    from tests.lab.test_report import fake_run

    compare = RunConfig(experiment="compare", label="GN", norms="group(groups=5)", backend="jax", seed=1)
    groups = RunConfig(**{**compare.to_dict(), "experiment": "groups", "label": "G=5"})
    source = fake_run(tmp_path, compare, 0.9)
    (source / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (source / ".metrics.jsonl.x.tmp").write_text('{"epo')
    (source / "error.txt").write_text("lost\n")
    store.copy_run(source, store.run_dir_for(tmp_path, groups), groups, tmp_path)
    copied = store.run_dir_for(tmp_path, groups)
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]


def test_the_lock_file_names_this_holder_only(tmp_path):
    """An earlier holder's longer record is replaced, not overwritten in part (which left its
    tail after the new record and made the file unreadable)."""
    (tmp_path / store.LOCK).write_text(json.dumps({"pid": 1, "host": "h", "since": "s", "command": "x" * 400}))
    with store.OutputLock(tmp_path) as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and lock.holder().startswith(f"process {os.getpid()} on ")
