"""The `normlab` command line: arguments, errors before work, dry runs, faults, end to end."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from normlab import _backend
from normlab.lab import backend as lab_backend
from normlab.lab import cli, commands, data, store
from normlab.lab.errors import ConfigError
from normlab.lab.experiments import config_keys

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "synthetic", "--set", "max_steps=2", "--set", "test_subset=32",
        "--no-progress", "--backend", BACKEND]


def run_main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ backend


@pytest.mark.parametrize("installed, expected", [
    ({"jax", "torch", "tensorflow"}, _backend.PREFERENCE[0]),
    ({"torch"}, "torch"),  # only PyTorch installed: never Keras' TensorFlow default
    ({"jax", "torch"}, next(b for b in _backend.PREFERENCE if b in {"jax", "torch"})),
])
def test_backend_auto_selection_follows_normlabs_preference(installed, expected):
    env = {}
    backend, why = lab_backend.select_backend(None, env, installed.__contains__, check_loaded=False)
    assert backend == expected and env["KERAS_BACKEND"] == expected
    assert why == f"auto-selected: the first installed of {', '.join(_backend.PREFERENCE)}"
    assert cli.BACKEND_NAMES == tuple(_backend.PREFERENCE)  # one preference list


def test_backend_flag_wins_over_environment_and_environment_over_auto():
    env = {"KERAS_BACKEND": BACKEND}
    assert lab_backend.select_backend(None, env, lambda n: False)[0] == BACKEND
    assert lab_backend.select_backend(BACKEND, {"KERAS_BACKEND": "nope"})[1] == "from --backend"


def test_backend_errors():
    with pytest.raises(lab_backend.BackendError, match="no Keras backend is installed"):
        lab_backend.select_backend(None, {}, lambda n: False)
    # The value comes from the environment, which the user never typed: the message says so.
    with pytest.raises(lab_backend.BackendError, match=re.escape(
            "Received: backend='numpyy' (from KERAS_BACKEND). Pass --backend jax, torch or tensorflow "
            "(or set KERAS_BACKEND to one of them).")):
        lab_backend.select_backend(None, {"KERAS_BACKEND": "numpyy"})
    other = next(b for b in lab_backend.BACKENDS if b != BACKEND)
    with pytest.raises(lab_backend.BackendError, match="already running"):
        lab_backend.select_backend(other, {})


# ------------------------------------------------------------------------------ parsing


def parse(*argv):
    return cli.make_experiment(cli.build_parser().parse_args(list(argv)))


def test_defaults_are_the_classic_comparison():
    experiment = parse("compare")
    assert experiment.seeds == (0, 1, 2)
    assert [c.label for c in experiment.configs] == [
        "GroupNorm", "InstanceNorm", "LayerNorm", "BatchNorm", "none"]
    assert {(c.dataset, c.protocol, c.epochs, c.batch_size, c.impl) for c in experiment.configs} == {
        ("mnist", "standard", 1, 32, "normlab")}


def test_options_reach_every_config():
    experiment = parse("compare", "--preset", "combos", "--seeds", "0,7", "--epochs", "2",
                       "--protocol", "tutorial", "--set", "train_mode_eval=yes", "--lr", "0.01")
    assert experiment.seeds == (0, 7) and len(experiment.grid()) == 8
    assert experiment.name == "combos-tutorial-e2-lr0.01-trainmode-True"
    assert {(c.epochs, c.protocol, c.train_mode_eval, c.learning_rate) for c in experiment.configs} == {
        (2, "tutorial", True, 0.01)}
    assert [c.label for c in experiment.configs] == ["BN only", "GN only", "GN then BN", "BN then GN"]


def test_settings_that_change_results_name_their_own_experiment():
    assert parse("compare").name == "compare"
    assert parse("compare", "--protocol", "tutorial").name == "compare-tutorial"
    assert parse("compare", "--train-subset", "10000").name == "compare-train10000"
    assert parse("sweep", "batch-size", "--max-steps", "1875").name == "batch-size-steps1875"
    assert parse("sweep", "batch-size-deep").name == "batch-size-deep"  # its 20,000 images
    assert parse("sweep", "groups", "--dataset", "fashion_mnist").name == "groups-fashion_mnist"
    quick = parse("compare", "--quick", "--norms", "batch", "batch>group(groups=5)")
    # --norms: a table of their own (they were mixed into the preset's, paired against GroupNorm)
    assert quick.seeds == (0,) and quick.name.startswith("compare-quick-norms-")
    assert parse("compare", "--norms", "batch").name.startswith("compare-norms-")
    assert parse("compare", "--norms", "batch").name != parse("compare", "--norms", "group").name
    assert {(c.dataset, c.max_steps) for c in quick.configs} == {("digits", 30)}
    assert [c.label for c in quick.configs] == ["batch", "batch>group(groups=5)"]
    # a setting --quick fixes, set otherwise, names its own table too (it used to share compare-quick's)
    assert parse("compare", "--quick", "--max-steps", "10").name == "compare-quick-steps10"
    assert parse("compare", "--quick", "--dataset", "mnist").name == "compare-quick-mnist"
    assert parse("sweep", "groups", "--quick", "--set", "test_subset=0").name == "groups-quick-test0"
    assert parse("compare", "--quick", "--dataset", "digits").name == "compare-quick"
    synthetic = parse("compare", "--quick", "--dataset", "synthetic")  # 100 test images, not --quick's 200
    assert synthetic.name == "compare-quick-synthetic" and synthetic.configs[0].test_subset == 0


def test_repeated_norms_and_values_are_joined_as_one_list():
    """Each repeat replaced the one before: only the last --norms (or --values) ran."""
    experiment = parse("compare", "--norms", "batch(axis=3)", "--norms", "group(groups=5, axis=3)", "layer")
    assert [c.label for c in experiment.configs] == ["batch(axis=3)", "group(groups=5, axis=3)", "layer"]
    assert experiment.name == parse("compare", "--norms", "batch(axis=3)", "group(groups=5, axis=3)", "layer").name
    experiment = parse("sweep", "groups", "--values", "1,2", "--values", "5")
    assert [c.x for c in experiment.configs] == [1, 2, 5]
    with pytest.raises(ConfigError, match=r"Received: values='1,2,2'\. Drop the repeats"):
        parse("sweep", "groups", "--values", "1,2", "--values", "2")
    with pytest.raises(ConfigError, match="expected each spec once"):
        parse("compare", "--norms", "batch", "--norms", "batch")


def test_impl_both_interleaves_and_skips_normless_duplicates():
    experiment = parse("compare", "--impl", "normlab,keras")
    assert [(c.label, c.impl) for c in experiment.configs] == [
        ("GroupNorm", "normlab"), ("GroupNorm", "keras"), ("InstanceNorm", "normlab"),
        ("InstanceNorm", "keras"), ("LayerNorm", "normlab"), ("LayerNorm", "keras"),
        ("BatchNorm", "normlab"), ("BatchNorm", "keras"), ("none", "normlab")]
    assert experiment.name == "compare"  # both implementations in one table
    # Listed the other way round, the norm-free model still runs under normlab: the report's main
    # table (under Keras it was left out of it, and --baseline none fell back to the first row).
    experiment = parse("compare", "--impl", "keras,normlab")
    assert [(c.label, c.impl) for c in experiment.configs][-3:] == [
        ("BatchNorm", "keras"), ("BatchNorm", "normlab"), ("none", "normlab")]


def test_sweeps_scale_learning_rate_with_batch_size():
    experiment = parse("sweep", "batch-size", "--values", "32,8,2")
    points = [(c.series, c.batch_size, c.learning_rate) for c in experiment.configs]
    assert points == [("BN", 32, 1e-3), ("BN", 8, 2.5e-4), ("BN", 2, 6.25e-5),
                      ("GN", 32, 1e-3), ("GN", 8, 2.5e-4), ("GN", 2, 6.25e-5)]
    assert all(c.train_mode_eval for c in experiment.configs)
    assert {(c.arch, c.train_subset) for c in parse("sweep", "batch-size-deep").configs} == {("deep", 20000)}
    assert [c.norms for c in parse("sweep", "groups").configs] == [
        f"group(groups={g}, axis=3)" for g in (1, 2, 5, 10)]


@pytest.mark.parametrize("argv, message", [
    (["compare", "--set", "epochz=2"], "expected one of the settings " + ", ".join(
        k for k in config_keys() if k not in commands.SET_BY_COMMAND) + ". Received: --set epochz=2"),
    (["compare", "--set", "seed=3"], "Use --seeds"),
    (["compare", "--set", "experiment=mine"], "The command picks it"),
    (["compare", "--set", "epochs"], "expected KEY=VALUE"),
    (["compare", "--set", "epochs=two"], "expected a value of type int"),
    (["compare", "--set", "seed=3"], "seed is set by the command"),
    (["compare", "--set", "norms=batch"], "norms is set by the command"),
    (["compare", "--preset", "combos", "--set", "norms=batch"], "norms is set by the command"),
    (["sweep", "groups", "--set", "norms=batch"], "norms is set by the command"),
    (["compare", "--seeds", "0"], "Invalid `seeds`: expected a count N from 1 to 10,000"),
    (["compare", "--seeds", "4294967296"], "Invalid `seeds`: expected a count N from 1 to 10,000"),
    (["compare", "--seeds", "4294967296,"], "expected distinct ints from 0 to 2**31 - 1"),
    # Keras' torch SeedGenerator keeps an int32: 2**31 trained seed 0, then failed with a traceback.
    (["compare", "--seeds", "0,2147483648"], "expected distinct ints from 0 to 2**31 - 1"),
    (["compare", "--seeds", "0,0"], "Invalid `seeds`: expected distinct ints from 0"),
    (["compare", "--seeds", "-1,0"], "Received: seeds='-1,0'"),
    (["compare", "--seeds", "0,,1"], "Received: seeds='0,,1'"),  # the gap was dropped: seeds 0 and 1
    (["compare", "--lr", "inf"], "Invalid `learning_rate`: expected a finite float > 0. Received: learning_rate=inf"),
    (["compare", "--lr", "nan"], "Received: learning_rate=nan"),
    (["compare", "--lr", "-1"], "Received: learning_rate=-1.0"),
    (["compare", "--protocol", "test"], "invalid choice: 'test'"),
    (["compare", "--epochs", "0"], "Invalid `epochs`: expected an int >= 1. Received: epochs=0. Pass e.g. --epochs 1."),
    # it was ignored, and named a table of its own (compare-e3-steps5) for the same computation
    (["compare", "--epochs", "3", "--max-steps", "5"], "Pass one of --epochs and --max-steps"),
    (["compare", "--set", "epochs=3", "--max-steps", "5"], "epochs=3 would be ignored"),
    (["compare", "--quick", "--epochs", "2"], "max_steps=30 (--max-steps, --set max_steps or --quick's)"),
    # --set overrode the option silently (compare-e2 for --epochs 3)
    (["compare", "--set", "epochs=2", "--epochs", "3"], "epochs is given twice. Received: --set epochs=2 and --epochs 3"),
    (["compare", "--lr", "0.1", "--set", "learning_rate=0.2"], "Received: --set learning_rate=0.2 and --lr 0.1"),
    (["compare", "--set", "epochs=2", "--set", "epochs=3"], "Received: --set epochs=3 and an earlier --set epochs=2. Pass one of them."),
    # the preset was dropped silently
    (["compare", "--preset", "combos", "--norms", "batch"], "Received: --preset combos and --norms batch"),
    (["sweep", "batch-size", "--lr", "0.01"], "It is 0.001 x batch / 32 at each batch size"),
    (["compare", "--dataset", "imagenet"], "Invalid `dataset`: expected one of mnist"),
    (["compare", "--impl", "torchy"], "Invalid `impl`"),
    (["compare", "--norms", "batch", "batch"], "expected each spec once"),
    # each spelling trained the same model again, compared with itself ("+0.00, p=1.000")
    (["compare", "--norms", "batch", "BATCH"], "Received: 'batch' and 'BATCH', the same norms"),
    (["compare", "--norms", "bn", "batch>none", "batch_norm"], "Received: 'bn' and 'batch_norm', the same norms"),
    (["compare", "--norms", "group(groups=5, axis=3)", "group(axis=3,groups=5)"], "expected each model once"),
    # a default spelled out builds the same layer
    (["compare", "--norms", "group", "gn(groups=32)"], "Received: 'group' and 'gn(groups=32)', the same norms"),
    (["compare", "--norms", "batch>group(groups=5)", "bn>group(groups=5, epsilon=0.001)"], "expected each model once"),
    # a list and a tuple of the same axes: two runs of one model, printed with one label
    (["compare", "--norms", "layer(axis=[1,2])", "layer(axis=(1, 2))"],
     "Received: 'layer(axis=[1, 2])' and 'layer(axis=(1, 2))', the same norms"),
    (["compare", "--norms", "batch>"], "Remove the stray '>'"),
    (["compare", "--cpus-per-run", "2"], "applies only to --executor ray"),
    (["compare", "--baseline", "Nope"], "Invalid `baseline`: expected a configuration or series"),
    (["sweep", "batch-size", "--batch-size", "8"], "Invalid `batch_size`: the batch-size sweep"),
    (["sweep", "batch-size", "--values", "8,8"], "expected each of the batch sizes once"),
    (["sweep", "groups", "--values", "-1"], "groups=-1 (instance norm) is G=10 here: pass 10."),
    (["sweep", "groups", "--values", ","], "Invalid `values`: expected comma-separated ints"),
    (["sweep", "batch-size", "--values", "8,,4"], "Received: values='8,,4'"),  # the gap was dropped
    (["compare", "--impl", "normlab,normlab"], "Invalid `impl`: expected normlab, keras or normlab,keras, each once"),
    (["sweep", "batch-size", "--values", "nan"], "Received: values='nan'"),
    (["sweep", "width"], "invalid choice: 'width'"),
])
def test_bad_arguments_are_one_line_before_any_work(argv, message, capsys, tmp_path):
    code, out, err = run_main([*argv, "--out", str(tmp_path / "runs")] if argv[0] == "compare"
                              else argv, capsys)
    assert code == 2 and message in err, err
    assert err.startswith("normlab: error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert not (tmp_path / "runs").exists()


def test_help_gives_every_option_a_description_and_its_default():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            assert action.required or "default" in action.help, (name, action.dest)
    text = subparsers["compare"].format_help() + subparsers["sweep"].format_help()
    for preset in ("classic", "combos", "combos-both", "batch-size", "batch-size-deep", "groups"):
        assert f"  {preset} " in text  # every choice described
    assert "``" not in parser.format_help() + text  # no markup in the terminal


def test_list_prints_clean_columns_without_keras(capsys):
    code, out, _ = run_main(["list"], capsys)
    assert code == 0 and "``" not in out and "[" not in out.split("implementations")[0]
    lines = out.splitlines()
    presets = lines[1:lines.index("")]
    assert len(presets) == 6
    starts = {len(line) - len(line.split("  ")[-1].lstrip()) for line in presets}
    assert len(starts) == 1  # one column for the summaries
    assert all(line.rstrip().endswith(".") for line in presets)  # whole sentences
    assert "norms: `normlab list norms`" in out


def test_list_shows_as_set_keys_only_those_set_accepts(capsys):
    """It listed seed, impl, norms... under --set KEY=VALUE, which refuses them."""
    _, out, _ = run_main(["list"], capsys)
    section = out.split("config keys (--set KEY=VALUE), with their defaults:\n")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in section.splitlines()]
    assert "epochs" in listed and "test_subset" in listed
    for key in commands.SET_BY_COMMAND:
        assert key not in listed
        with pytest.raises(ConfigError, match=f"{key} is set by the command, not by --set"):
            parse("compare", "--set", f"{key}=1")
    assert "set by the command and its options, not by --set: experiment, label" in out
    for key in listed:  # every key listed is accepted (with its default)
        parse("compare", "--set", f"{key}={commands.dataclasses.asdict(commands.RunConfig())[key]}")


def test_list_norms_uses_the_registry(capsys):
    code, out, _ = run_main(["list", "norms", "--backend", BACKEND], capsys)
    assert code == 0 and "group (gn, groupnorm, group_norm)" in out
    assert "[keras: RMSNormalization]" in out and "frn" in out
    assert "[two-input: not for --norms]" in out and "[kernel: not for --norms]" in out


# --------------------------------------------------------------------- errors before work


def test_a_norm_that_cannot_be_built_fails_before_training_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from normlab.lab import training

    def no_training(*args, **kwargs):
        raise AssertionError("a run started training before the grid was checked")

    monkeypatch.setattr(training, "run_one", no_training)
    out = tmp_path / "runs"
    code, _, err = run_main(["compare", "--norms", "group(groups=3, axis=3)", "--out", str(out), *TINY],
                            capsys)
    assert code == 2 and "Invalid `groups`" in err and "configuration 'group(groups=3, axis=3)'" in err
    assert err.splitlines()[-1].startswith("normlab: error: ") and "Traceback" not in err
    assert not out.exists()


def test_impl_keras_without_a_keras_layer_fails_before_training(tmp_path, capsys):
    code, _, err = run_main(["compare", "--norms", "frn", "--impl", "keras", "--out",
                             str(tmp_path / "runs"), *TINY], capsys)
    assert code == 2 and "has no built-in layer for the norm 'frn'" in err
    assert not (tmp_path / "runs").exists()


def test_impl_both_runs_a_norm_keras_lacks_with_normlabs_layers_only(tmp_path, capsys):
    code, out, err = run_main(["compare", "--norms", "batch", "frn", "--impl", "normlab,keras", "--dry-run", "--seeds", "1",
                               "--out", str(tmp_path / "runs"), *TINY], capsys)
    assert code == 0, err
    assert "normlab: 'frn' runs with normlab's layers only: Invalid `impl`: Keras" in err
    runs = [line.split()[1] for line in out.splitlines()]
    assert [Path(r).parent.name.split("-")[1] for r in runs] == ["normlab", "keras", "normlab"]
    assert [Path(r).parent.parent.name for r in runs] == ["batch", "batch", "frn"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(BACKEND != "torch", reason="Keras' LayerNormalization(axis=1) fails on torch only")
def test_a_keras_layer_that_fails_when_called_is_caught_before_training(tmp_path, capsys):
    code, _, err = run_main(["compare", "--norms", "layer(axis=1)", "--impl", "keras", "--out",
                             str(tmp_path / "runs"), *TINY], capsys)
    assert code == 2 and "Keras' layer fails when called on the torch backend: RuntimeError" in err
    assert "Use --impl normlab for it" in err and not (tmp_path / "runs").exists()


def test_out_that_is_a_file_or_unwritable_is_refused_before_work(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run_main(["compare", "--out", str(a_file), *TINY], capsys)
    assert code == 2 and "expected a folder. Received: out=" in err and "is a file" in err
    code, _, err = run_main(["compare", "--out", str(a_file / "sub"), *TINY], capsys)
    assert code == 2 and "which is a file" in err
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    code, _, err = run_main(["compare", "--out", str(tmp_path / "ro" / "runs"), *TINY], capsys)
    assert code == 2 and "is not writable" in err and "Keras backend" not in err


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_file_where_the_report_goes_is_refused_before_training(tmp_path, capsys, monkeypatch, dry_run):
    """It was found once every run had trained, and the error blamed --out."""
    def trained(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")

    monkeypatch.setattr(commands, "train_and_report", trained)
    monkeypatch.setattr(commands, "dry_run", trained)
    out = tmp_path / "runs"
    out.mkdir()
    (out / "report").write_text("notes")
    code, _, err = run_main(["compare", "--out", str(out), *TINY, *dry_run], capsys)
    assert code == 2 and err.count("\n") == 1 and "Keras backend" not in err, err
    assert f"where {out / 'report'} is a file. Remove or rename that file, or pass another --out." in err


@pytest.mark.parametrize("argv, message", [
    (["compare", "--out", "", "--dry-run", *TINY],
     "argument --out: Invalid `out`: expected a non-empty folder path (an empty one would be the current "
     "folder). Received: out=''. Pass --out with a folder"),
    (["report", ""], "Invalid `runs_dir`: expected a non-empty folder path (an empty one would be the current "
                     "folder). Received: runs_dir=''. Pass the --out folder of a grid"),
    (["report", "runs", "--out", ""], "Received: out=''. Pass --out with a folder, or leave it out for RUNS_DIR/report."),
    # said "Searched: data_dir: not given" beside "Received: data_dir=''"
    (["compare", "--data-dir", "", "--dataset", "mnist", "--dry-run", "--backend", BACKEND],
     "Invalid `data_dir`: expected a non-empty folder path"),
    # started Ray on this machine, as if no address had been given
    (["compare", "--executor", "ray", "--address", "", "--dry-run", *TINY],
     "Invalid `address`: expected a non-empty address: 'local', 'auto', HOST:PORT or ray://HOST:PORT. "
     "Received: address=''. Pass one of them, or leave --address out for $RAY_ADDRESS, else local."),
])
def test_an_empty_path_or_address_is_refused_not_read_as_the_current_folder(argv, message, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, _, err = run_main(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_second_invocation_on_the_same_out_says_who_holds_it(tmp_path, capsys):
    out = tmp_path / "runs"
    with store.OutputLock(out):
        code, _, err = run_main(["compare", "--out", str(out), *TINY], capsys)
    assert code == 2 and f"is in use by process {os.getpid()}" in err
    assert "pass another --out" in err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "train_and_report", interrupted)
    code, _, err = run_main(["compare", "--out", str(tmp_path / "runs"), *TINY], capsys)
    assert code == 130 and err.splitlines()[-1] == cli.INTERRUPTED


@pytest.mark.once  # the command line's data and run-folder logic: the same on every backend
def test_missing_mnist_file_is_named_and_explicit_dataset_fails(no_datasets, tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    code, _, err = run_main(["compare", "--dataset", "mnist", "--data-dir", str(folder),
                             "--out", str(tmp_path / "runs"), *TINY[2:]], capsys)
    assert code == 2, err
    assert "has 1 of 4 files, missing train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------- dry run, keys


@pytest.mark.once  # the command line's data and run-folder logic: the same on every backend
def test_dry_run_is_true_after_a_subset_run(tmp_path, capsys):
    out = str(tmp_path / "runs")
    base = ["compare", "--norms", "batch", "--seeds", "1", "--out", out, "--dataset", "synthetic",
            "--set", "test_subset=32", "--no-progress", "--backend", BACKEND]
    code, _, err = run_main([*base, "--max-steps", "2", "--train-subset", "64"], capsys)
    assert code == 0, err
    code, out_text, _ = run_main([*base, "--max-steps", "2", "--dry-run"], capsys)
    (line,) = out_text.splitlines()  # the full protocol: a new run, never the subset's
    full = "compare-synthetic-test32-steps2-norms-4bb24e"
    subset = "compare-synthetic-train64-test32-steps2-norms-4bb24e"
    assert line.startswith(f"run    {Path(out) / full / 'batch' / BACKEND}-normlab-")
    code, out_text, _ = run_main([*base, "--max-steps", "2", "--train-subset", "64", "--dry-run"], capsys)
    assert code == 0 and out_text.startswith("reuse  ") and out_text.count("\n") == 1
    code, _, err = run_main([*base, "--max-steps", "2"], capsys)  # the full run is not refused
    assert code == 0, err
    dirs = sorted(p.relative_to(out).parts[0] for p in Path(out).rglob("summary.json"))
    assert dirs == [full, subset]


@pytest.mark.once  # the command line's data and run-folder logic: the same on every backend
def test_dry_run_refuses_a_data_dir_that_does_not_exist(tmp_path, capsys):
    code, out, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run", "--data-dir",
                               str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs"), "--backend", BACKEND],
                              capsys)
    assert code == 2 and "The data directory does not exist" in err and out == ""
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, out, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run", "--data-dir",
                               str(a_file), "--out", str(tmp_path / "runs"), "--backend", BACKEND], capsys)
    assert code == 2 and "The data directory is a file, not a folder" in err and out == ""
    (tmp_path / "empty").mkdir()  # it said "not found here; it will be downloaded once"
    code, out, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run", "--data-dir",
                               str(tmp_path / "empty"), "--out", str(tmp_path / "runs"), "--backend", BACKEND], capsys)
    assert code == 2 and "a folder given is used alone" in err and out == ""


def test_report_command_errors(tmp_path, capsys):
    code, _, err = run_main(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, _, err = run_main(["report", str(tmp_path)], capsys)
    assert code == 2 and "expected a folder with finished runs" in err
    code, _, err = run_main(["report", str(tmp_path / "nothing"), "--baseline", "GN"], capsys)
    assert code == 2 and "does not exist" in err  # the folder first, then the baseline in it


def test_report_command_baseline_and_plain_text(tmp_path, capsys):
    from normlab.lab.experiments import RunConfig
    from tests.lab.test_report import fake_run

    runs = tmp_path / "runs"
    for seed in range(3):
        for label, acc in (("BN", 0.90), ("GN", 0.95)):
            fake_run(runs, RunConfig(experiment="c", label=label, norms="batch", seed=seed), acc + 0.001 * seed)
    code, out, err = run_main(["report", str(runs), "--baseline", "GN"], capsys)
    assert code == 0, err
    assert "Paired differences against GN\n" in out and "| BN | GN | 3 | -5.00 [-5.20, -4.80] | < 0.001 | lower |" in out
    assert "#" not in out and "**" not in out and "![" not in out  # no Markdown markup on the terminal
    assert "![c](c.png)" in (runs / "report" / "report.md").read_text()  # the file keeps it
    code, _, err = run_main(["report", str(runs), "--baseline", "LN"], capsys)
    assert code == 2 and "Received: baseline='LN'. Valid: BN, GN." in err


# ------------------------------------------------------------------ start-up: no backend


LIGHT = """
import sys, types
pkg = types.ModuleType("normlab"); pkg.__path__ = [{root!r} + "/normlab"]; sys.modules["normlab"] = pkg
from normlab.lab import cli
code = cli.main({argv!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "jax", "torch", "tensorflow"))
print("HEAVY", heavy, "CODE", code)
"""


@pytest.mark.once
@pytest.mark.parametrize("argv", [["--help"], ["list"], ["compare", "--seeds", "0,0"],
                                  ["sweep", "groups", "--values", "-1"], ["report", "REPORT_DIR"]])
def test_the_lab_imports_no_backend_for_help_list_errors_and_report(argv, tmp_path):
    """The lab's own code, with normlab's package __init__ bypassed (it imports Keras today)."""
    if argv == ["report", "REPORT_DIR"]:
        from normlab.lab.experiments import RunConfig
        from tests.lab.test_report import fake_run

        fake_run(tmp_path / "runs", RunConfig(experiment="c", label="BN", norms="batch"), 0.9)
        argv = ["report", str(tmp_path / "runs")]
    code = LIGHT.format(root=str(ROOT), argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "HEAVY [] CODE" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


HELP_PROBE = """
import sys
import _normlab_cli
code = _normlab_cli.main({argv!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "jax", "torch", "tensorflow"))
print("HEAVY", heavy, "CODE", code)
"""


@pytest.mark.once
@pytest.mark.parametrize("argv", [["--help"], ["list"], ["compare", "--seeds", "0,0"]])
def test_the_normlab_program_imports_neither_keras_nor_a_backend(argv):
    """The installed program's entry point (pyproject's [project.scripts])."""
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "HEAVY [] CODE" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "absl" not in proc.stderr and "oneDNN" not in proc.stderr


@pytest.mark.once
def test_norms_that_build_the_same_model_are_found_on_the_chosen_backend(tmp_path):
    """The check imported the registry (so Keras) before --backend applied: the
    configured backend's start-up lines leaked, and the program restarted itself."""
    argv = ["compare", "--norms", "batch", "BN", "--backend", "jax", "--out", str(tmp_path / "runs")]
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "tensorflow"})
    assert "CODE 2" in proc.stdout and "Received: 'batch' and 'BN', the same norms" in proc.stderr, proc.stderr
    heavy = {m.split(".")[0] for m in ast.literal_eval(proc.stdout.split("HEAVY", 1)[1].split("CODE")[0].strip())}
    assert heavy == {"keras", "jax"}, heavy
    assert "oneDNN" not in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.once
def test_the_program_completes_the_package_on_demand():
    """After the light start, `import normlab` still gives the whole package."""
    code = ("import _normlab_cli, sys; _normlab_cli._light_package(); import normlab; "
            "from normlab import registry; print(normlab.__version__, normlab.GroupNormalization.__name__, "
            "'group' in registry.registry())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": BACKEND})
    assert proc.stdout.split()[-2:] == ["GroupNormalization", "True"], proc.stdout + proc.stderr[-2000:]


# ------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_compare_end_to_end_in_a_subprocess(tmp_path):
    """`normlab compare --quick`: the table, report files, permissions, no backend log noise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": BACKEND}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "normlab.lab.cli", "compare", "--quick", "--norms", "batch",
           "--set", "max_steps=2", "--dataset", "synthetic", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"Keras backend {BACKEND} (from KERAS_BACKEND)" in proc.stderr
    if BACKEND != "tensorflow":
        assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, proc.stderr
    assert "| batch | 1 |" in proc.stdout and "1 seed, no interval" not in proc.stdout
    name = "compare-quick-synthetic-steps2-norms-4bb24e"  # the settings --quick would have set otherwise
    assert sorted(p.name for p in (out / "report").iterdir()) == [
        f"{name}.csv", f"{name}.json", f"{name}.md", f"{name}.png", "report.md"]
    (run_dir,) = [p.parent for p in out.rglob("summary.json")]
    assert run_dir.relative_to(out).parts[:2] == (name, "batch")
    assert run_dir.parent.name.startswith(f"{BACKEND}-normlab-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == BACKEND and summary["steps"] == 2
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir()}
    assert len(set(modes.values())) == 1, modes  # config, metrics, summary: same permissions


@pytest.mark.slow
def test_ctrl_c_during_training_and_the_rerun_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "normlab.lab.cli", "compare", "--quick", "--norms", "batch", "none",
           "--set", "max_steps=150", "--set", "batch_size=8", "--dataset", "synthetic",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # interrupt as the second run starts (compiling, or training)
        seen.append(line)
        if line.startswith("[1/2]"):
            proc.send_signal(signal.SIGINT)
            break
    err = "".join(seen) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == cli.INTERRUPTED and "Traceback" not in err, err
    assert len(list(out.rglob("summary.json"))) == 1
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    name = "compare-quick-synthetic-steps150-b8-norms-40f693"
    assert f"[1/2] {name}/batch/seed0: finished earlier, reused" in proc.stderr
    assert len(list(out.rglob("summary.json"))) == 2


@pytest.mark.once  # the command line's data and run-folder logic: the same on every backend
def test_offline_first_run_falls_back_to_the_bundled_digits(no_datasets, tmp_path, capsys, monkeypatch):
    def offline(url, dest, progress):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data, "_fetch", offline)
    out = tmp_path / "runs"
    code, stdout, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--set", "max_steps=2",
                                  "--out", str(out), "--no-progress", "--backend", BACKEND], capsys)
    assert code == 0, err
    assert "running on scikit-learn's bundled 8x8 digits instead" in err
    assert "Dataset: scikit-learn's bundled 8x8 digits, not MNIST. MNIST was not available" in stdout
    assert "**" not in stdout and "`" not in stdout and "![" not in stdout  # plain text on the terminal
    (summary,) = out.rglob("summary.json")
    assert summary.relative_to(out).parts[0] == "compare-steps2-norms-4bb24e-digits"
    assert "name resolution" in json.loads(summary.read_text())["notes"]["dataset_fallback"]
    code, _, err = run_main(["compare", "--norms", "batch", "--dataset", "mnist", "--seeds", "1",
                             "--out", str(tmp_path / "explicit"), "--no-progress", "--backend", BACKEND],
                            capsys)
    assert code == 2 and "Dataset 'mnist' was not found and could not be downloaded" in err
    assert not (tmp_path / "explicit").exists()
    empty = tmp_path / "empty"  # --data-dir points at files the user has: no fallback either
    empty.mkdir()
    code, _, err = run_main(["compare", "--norms", "batch", "--data-dir", str(empty), "--seeds", "1",
                             "--out", str(tmp_path / "given"), "--no-progress", "--backend", BACKEND],
                            capsys)
    assert code == 2 and "Dataset 'mnist' was not found" in err and not (tmp_path / "given").exists()
    code, out_text, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run",
                                    "--out", str(tmp_path / "dry"), "--backend", BACKEND], capsys)
    assert code == 0 and "or if that fails, the runs use the bundled 8x8 digits instead" in err
    assert not (tmp_path / "dry").exists()
    code, _, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run", "--executor", "ray",
                             "--address", "local", "--out", str(tmp_path / "dry"), "--backend", BACKEND], capsys)
    assert code == 0 and "it will be downloaded once" in err and "digits" not in err  # Ray never falls back


@pytest.mark.parametrize("argv, message", [
    (["compare", "--protocol", "tutorial", "--train-subset", "20000"],
     "Invalid `train_subset`: expected at most 10000: the tutorial protocol trains on 10,000 mnist images"),
    (["sweep", "batch-size-deep", "--protocol", "tutorial", "--train-subset", "20000"],
     "Received: train_subset=20000"),
    (["compare", "--quick", "--set", "test_subset=400"],
     "Invalid `test_subset`: expected at most 359: the standard protocol evaluates on 359 digits images"),
    (["compare", "--dataset", "synthetic", "--train-subset", "501"], "expected at most 500"),
])
def test_a_subset_larger_than_its_split_is_an_error(argv, message):
    """It silently used the whole split, in a table named for the subset."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(*argv)
    parse("compare", "--quick", "--set", "test_subset=359", "--train-subset", "1438")  # all of digits


@pytest.mark.parametrize("argv, subset, name", [
    ([], 20000, "batch-size-deep"),
    (["--quick"], 0, "batch-size-deep-quick"),
    (["--dataset", "digits"], 0, "batch-size-deep-digits-train0"),
    (["--protocol", "tutorial"], 0, "batch-size-deep-tutorial-train0"),
    (["--dataset", "synthetic", "--train-subset", "100"], 100, "batch-size-deep-synthetic-train100"),
])
def test_the_deep_sweeps_default_subset_fits_a_smaller_split(argv, subset, name):
    """Its 20,000 images, set by the preset, made `--quick` (digits: 1,438) an error."""
    experiment = parse("sweep", "batch-size-deep", *argv)
    assert {c.train_subset for c in experiment.configs} == {subset} and experiment.name == name


def test_the_digits_fallback_uses_all_of_a_split_smaller_than_the_subset():
    from normlab.lab.experiments import DATASETS
    from normlab.lab.presets import replace_dataset

    experiment = replace_dataset(parse("sweep", "batch-size-deep", "--set", "test_subset=300"), "digits")
    assert {(c.train_subset, c.test_subset) for c in experiment.configs} == {(0, 300)}
    assert DATASETS["digits"].split_sizes("tutorial") == (359, 1438)


def test_the_datasets_sizes_are_those_loaded():
    from normlab.lab.data import load_dataset
    from normlab.lab.experiments import DATASETS

    for name in ("digits", "synthetic"):
        ds = load_dataset(name)
        assert DATASETS[name].sizes == (len(ds.y_train), len(ds.y_test))


@pytest.mark.once  # the command line's data and run-folder logic: the same on every backend
def test_data_dir_with_a_bundled_dataset_is_an_error(tmp_path, capsys):
    """``--data-dir`` was ignored without a word for the digits and synthetic datasets."""
    for extra in (["--quick"], ["--dataset", "synthetic"]):
        code, out, err = run_main(["compare", "--norms", "batch", "--seeds", "1", "--dry-run", *extra,
                                   "--data-dir", str(tmp_path), "--backend", BACKEND], capsys)
        assert code == 2 and "Invalid `data_dir`:" in err and "needs no files" in err and out == ""


def test_a_baseline_may_be_written_as_its_norms_spec_was(tmp_path, capsys):
    code, out, err = run_main(["compare", "--quick", "--norms", "batch > none", "none>none", "--baseline",
                               "batch >none", "--dry-run", "--out", str(tmp_path), "--backend", BACKEND], capsys)
    assert code == 0, err
    code, _, err = run_main(["compare", "--quick", "--norms", "batch", "--baseline", "group", "--dry-run",
                             "--out", str(tmp_path), "--backend", BACKEND], capsys)
    assert code == 2 and "Invalid `baseline`" in err and "Valid: batch" in err


def test_specs_are_rewritten_outside_quotes_only():
    from normlab.lab.models import canonical_placement

    assert canonical_placement("instance(name='x , )')") == "instance(name='x , )')"
    assert canonical_placement("a(b='x\\'y , z', c = 1 ,)") == "a(b='x\\'y , z', c=1,)"
    assert canonical_placement("f(a=[1,2 ,])") == "f(a=[1, 2,])"


def test_norms_written_differently_are_one_table_and_one_row():
    a = parse("compare", "--norms", "batch > none", "group( groups=2,axis=3 )")
    b = parse("compare", "--norms", "batch>none", "group(groups=2, axis=3)")
    assert a.name == b.name and a.configs == b.configs
    assert [c.label for c in a.configs] == ["batch>none", "group(groups=2, axis=3)"]
    with pytest.raises(ConfigError, match="expected each spec once"):
        parse("compare", "--norms", "batch", " batch")
    assert parse("compare", "--norms", "group(name='a b')").configs[0].norms == "group(name='a b')"


@pytest.mark.once
@pytest.mark.parametrize("module", ["normlab", "normlab.lab"])
def test_python_dash_m_is_the_command(module):
    """``python -m normlab`` failed: "No module named normlab.__main__"; so did
    ``python -m normlab.lab`` (the package that holds the command)."""
    done = subprocess.run([sys.executable, "-m", module, "list"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compare" in done.stdout, done.stderr[-2000:]


@pytest.mark.once
@pytest.mark.parametrize("module", ["normlab", "normlab.lab", "_normlab_cli"])
def test_a_reader_that_left_gets_no_traceback(module):
    """``normlab list | head -1``: the reader closes the pipe, and writing to it raises
    BrokenPipeError. Every entry point leaves quietly with 141 (128 + SIGPIPE), as the
    shell's own commands do; ``python -m`` printed a traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", module, "list"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_folder_given_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """The shell leaves ``~`` in ``--out=~/runs`` as it is: the output folder was checked at
    $HOME/runs but the runs, the lock and the report went to a folder literally named "~"."""
    from normlab.lab.experiments import RunConfig
    from normlab.lab.report import write_report
    from tests.lab.test_report import fake_run

    monkeypatch.setenv("HOME", str(tmp_path))
    parser = cli.build_parser()
    args = parser.parse_args(["compare", "--out=~/runs", "--data-dir=~/data"])
    assert (args.out, args.data_dir) == (str(tmp_path / "runs"), str(tmp_path / "data"))
    args = parser.parse_args(["report", "~/runs", "--out=~/report"])
    assert (args.runs_dir, args.out) == (str(tmp_path / "runs"), str(tmp_path / "report"))
    from normlab.lab.runner import run_grid

    config = RunConfig(experiment="c", label="A", norms="none", seed=0, backend=keras.backend.backend())
    fake_run(tmp_path / "runs", config, 0.9)
    monkeypatch.chdir(tmp_path / "runs")  # a literal "~" would land here
    (result,) = run_grid([config], "~/runs", progress=False, say=lambda line: None)
    assert result.status == "skipped"  # found finished in $HOME/runs
    written = write_report("~/runs", "~/report")
    assert (tmp_path / "report" / "report.md") in written and not (tmp_path / "runs" / "~").exists()


def test_hidden_log_lines_are_shown_on_an_error_not_on_ctrl_c(capfd, monkeypatch):
    """A backend's start-up logs are hidden; an error shows them (they may say why), Ctrl-C
    does not: it printed TensorFlow's log lines above the one line saying it was interrupted."""
    monkeypatch.delenv("NORMLAB_VERBOSE", raising=False)
    for error, shown in ((RuntimeError("no backend"), True), (KeyboardInterrupt(), False)):
        with pytest.raises(type(error)):
            with lab_backend.quiet_stderr():
                os.write(2, b"a hidden log line\n")
                raise error
        assert ("a hidden log line" in capfd.readouterr().err) is shown


@pytest.mark.parametrize("argv, command", [
    (["compare", "--values", "1,2"], "compare"), (["sweep", "groups", "--norms", "batch"], "sweep"),
    (["report", "runs", "--seeds", "2"], "report")])
def test_an_argument_the_command_does_not_take_points_at_the_commands_help(argv, command, capsys):
    """argparse reports such arguments from the top-level parser, whose help lists no options."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("normlab: error: unrecognized arguments: ") and f"(see `normlab {command} --help`)" in err


def test_main_called_from_python_leaves_its_callers_process_as_it_found_it(tmp_path, capsys, monkeypatch):
    """A grid reseeded Python's, NumPy's, torch's and TensorFlow's global generators with its
    last run's seed, left the backends' loggers at ERROR and --verbose's NORMLAB_VERBOSE=1 set,
    and each run's clear_session dropped the caller's Keras state (its global dtype policy,
    layer-name counters and Keras' own seed)."""
    import logging
    import os
    import random
    import sys

    import numpy as np

    from normlab.lab import backend

    for name in backend.LAB_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    levels = {name: logging.getLogger(name).level for name in backend.QUIET_LOGGERS}
    torch = sys.modules.get("torch")
    import keras
    import tensorflow as tf

    def draws():
        keras_draw = keras.ops.convert_to_numpy(keras.random.uniform(()))
        tf_draw = tf.random.uniform(()).numpy()
        return [random.random(), np.random.rand(), keras_draw, tf_draw] + (
            [] if torch is None else [float(torch.rand(()))])

    def seed():  # (Keras seeds torch only on its torch backend)
        keras.utils.set_random_seed(1234)
        tf.random.set_seed(1234)
        if torch is not None:
            torch.manual_seed(1234)

    named = keras.layers.Dense(1).name  # (a layer's default seed draws from Python's generator)
    seed()
    policy = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for extra in ([], ["--verbose"]):  # (quiet: the loggers; --verbose: NORMLAB_VERBOSE)
            code, _, _ = run_main(["compare", "--norms", "batch", "--seeds", "1", *extra, "--out",
                                   str(tmp_path / f"runs{len(extra)}"), *TINY], capsys)
            assert code == 0
        after = draws()
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        count = int(named.rpartition("_")[2]) if named != "dense" else 0
        assert keras.layers.Dense(1).name == f"dense_{count + 1}"
    finally:
        keras.config.set_dtype_policy(policy)
    assert {name: logging.getLogger(name).level for name in backend.QUIET_LOGGERS} == levels
    assert not {name for name in backend.LAB_ENVIRONMENT if name in os.environ}
    seed()
    assert after == draws()
