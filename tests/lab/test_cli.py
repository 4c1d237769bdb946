"""The `normlab` command line: arguments, backend selection, a quick end-to-end run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from normlab.lab import cli
from normlab.lab.experiments import config_keys

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[2]


def fake_importer(importable):
    def importer(name):
        if name not in importable:
            raise ImportError(f"No module named {name!r}")
    return importer


@pytest.mark.parametrize("importable, expected", [
    ({"jax", "torch", "tensorflow"}, "jax"),
    ({"torch"}, "torch"),  # only PyTorch installed: never Keras' TensorFlow default
    ({"tensorflow"}, "tensorflow"),
])
def test_backend_auto_selection(importable, expected):
    if expected != BACKEND:
        sys_keras = sys.modules.pop("keras")  # pretend Keras is not loaded yet
    try:
        env = {}
        backend, why = cli.select_backend(None, env, fake_importer(importable))
    finally:
        if expected != BACKEND:
            sys.modules["keras"] = sys_keras
    assert backend == expected and env["KERAS_BACKEND"] == expected and "auto-selected" in why


def test_backend_flag_wins_over_environment_and_environment_over_auto():
    env = {"KERAS_BACKEND": BACKEND}
    assert cli.select_backend(None, env, fake_importer(set()))[0] == BACKEND
    assert cli.select_backend(BACKEND, {"KERAS_BACKEND": "nope"})[1] == "from --backend"


def test_backend_errors():
    with pytest.raises(SystemExit, match="no Keras backend could be imported"):
        cli.select_backend(None, {}, fake_importer(set()))
    with pytest.raises(SystemExit, match="Invalid `backend`.*Received: backend='numpyy'"):
        cli.select_backend(None, {"KERAS_BACKEND": "numpyy"})
    other = next(b for b in cli.BACKENDS if b != BACKEND)
    with pytest.raises(SystemExit, match="already loaded"):
        cli.select_backend(other, {})


def parse(*argv):
    return cli.make_experiment(cli.build_parser().parse_args(list(argv)))


def test_defaults_are_the_classic_comparison():
    experiment = parse("compare")
    assert experiment.seeds == (0, 1, 2)
    assert [c.label for c in experiment.configs] == [
        "GroupNorm", "InstanceNorm", "LayerNorm", "BatchNorm", "none"]
    assert {(c.dataset, c.protocol, c.epochs, c.batch_size) for c in experiment.configs} == {
        ("mnist", "standard", 1, 32)}


def test_options_reach_every_config():
    experiment = parse("compare", "--preset", "combos", "--seeds", "0,7", "--epochs", "2",
                       "--protocol", "tutorial", "--set", "train_mode_eval=yes", "--lr", "0.01")
    assert experiment.seeds == (0, 7) and len(experiment.grid()) == 8
    assert experiment.name == "combos-tutorial" and experiment.configs[0].experiment == "combos-tutorial"
    assert {(c.epochs, c.protocol, c.train_mode_eval, c.learning_rate) for c in experiment.configs} == {
        (2, "tutorial", True, 0.01)}
    assert [c.norms.count(">") for c in experiment.configs] == [1, 1, 1, 1]


def test_quick_and_custom_norms():
    experiment = parse("compare", "--quick", "--norms", "batch", "batch>group(groups=5)")
    assert experiment.seeds == (0,) and [c.label for c in experiment.configs] == [
        "batch", "batch>group(groups=5)"]
    assert {(c.dataset, c.max_steps) for c in experiment.configs} == {("digits", 30)}
    assert experiment.name == "compare-quick"
    assert parse("sweep", "groups", "--dataset", "fashion_mnist").name == "groups-fashion_mnist"
    assert parse("compare").name == "compare"
    assert parse("compare", "--quick", "--dataset", "mnist").configs[0].dataset == "mnist"


def test_sweeps_scale_learning_rate_with_batch_size():
    experiment = parse("sweep", "batch-size", "--values", "32,8,2")
    points = [(c.series, c.batch_size, c.learning_rate) for c in experiment.configs]
    assert points == [("BN", 32, 1e-3), ("BN", 8, 2.5e-4), ("BN", 2, 6.25e-5),
                      ("GN", 32, 1e-3), ("GN", 8, 2.5e-4), ("GN", 2, 6.25e-5)]
    assert all(c.train_mode_eval for c in experiment.configs)
    assert {c.arch for c in parse("sweep", "batch-size-deep").configs} == {"deep"}
    assert [c.norms for c in parse("sweep", "groups").configs] == [
        f"group(groups={g}, axis=3)" for g in (1, 2, 5, 10)]


@pytest.mark.parametrize("argv, message", [
    (["compare", "--set", "epochz=2"], "Valid keys: " + ", ".join(config_keys())),
    (["compare", "--set", "epochs"], "expected KEY=VALUE"),
    (["compare", "--set", "epochs=two"], "expected a value of type int"),
    (["compare", "--seeds", "0"], "Invalid `seeds`"),
    (["compare", "--protocol", "test"], "invalid choice"),
    (["compare", "--epochs", "0"], "Invalid `epochs`"),
    (["sweep", "batch-size", "--batch-size", "8"], "Invalid `batch_size`: the batch-size sweep"),
    (["sweep", "width"], "invalid choice"),
])
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_unknown_norm_lists_valid_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--backend", BACKEND, "--norms", "batch>grop"])
    assert "Valid names:" in capsys.readouterr().err


def test_dry_run_lists_the_grid(tmp_path, capsys):
    assert cli.main(["sweep", "groups", "--backend", BACKEND, "--out", str(tmp_path),
                     "--seeds", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[0].startswith("to run") and lines[0].endswith("groups/G=1/seed0")


def test_report_command_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", str(tmp_path)])
    assert "Invalid `runs_dir`" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_compare_end_to_end_in_a_subprocess(tmp_path):
    """`normlab compare --quick` with no backend configured: auto-selection, table, report files."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "normlab.lab.cli", "compare", "--quick", "--norms", "batch",
           "--set", "max_steps=2", "--dataset", "synthetic", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = next(b for b in cli.BACKENDS if importlib.util.find_spec(b) is not None)
    assert f"Keras backend {first} (auto-selected, the first of jax, torch, tensorflow" in proc.stderr
    assert "| batch | 1 |" in proc.stdout
    assert sorted(p.name for p in (out / "report").iterdir()) == [
        "compare-quick.csv", "compare-quick.json", "compare-quick.md", "compare-quick.png",
        "report.md"]
    summary = json.loads((out / "compare-quick" / "batch" / "seed0" / "summary.json").read_text())
    assert summary["backend"] == first and summary["steps"] == 2
