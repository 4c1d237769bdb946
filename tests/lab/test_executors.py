"""Executors: option checks everywhere; a real local Ray instance (2 workers) in one backend run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from normlab.lab import cli, executors, store
from normlab.lab.errors import ConfigError
from normlab.lab.executors import LocalExecutor, RayExecutor, make_executor, task_name
from normlab.lab.experiments import RunConfig

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[2]


def test_make_executor_defaults_and_options():
    assert make_executor() == LocalExecutor()
    ray = make_executor("ray", address="local", cpus_per_run=2, gpus_per_run=0.5, retries=1)
    assert ray == RayExecutor(address="local", cpus_per_run=2, gpus_per_run=0.5, retries=1)
    assert ray.describe() == "Ray executor on a local Ray instance (2 CPU, 0.5 GPU per run)"
    assert "the Ray cluster at 10.0.0.5:6379" in RayExecutor("10.0.0.5:6379").describe()


def test_address_defaults_to_ray_address_then_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert RayExecutor().resolved_address() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert RayExecutor().resolved_address() == "head:6379"
    assert RayExecutor("auto").resolved_address() == "auto"


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="dask"), "Invalid `executor`: expected one of local, ray. Received: executor='dask'. "
                        "Pass --executor local or --executor ray."),
    (dict(name="local", address="local"), "Invalid `address`: it applies only to --executor ray. "
                                          "Received: address='local' with executor='local'. "
                                          "Add --executor ray, or drop it."),
    (dict(name="ray", cpus_per_run=0), "Invalid `cpus_per_run`: expected a finite number >= 0.0001. "
                                       "Received: cpus_per_run=0. Pass --cpus-per-run 1."),
    # Ray failed at submission, with a traceback: infinity, and fractions below its unit of 1e-4
    (dict(name="ray", cpus_per_run=float("inf")), "Invalid `cpus_per_run`: expected a finite number >= 0.0001. "
                                                  "Received: cpus_per_run=inf."),
    (dict(name="ray", cpus_per_run=1e-5), "Invalid `cpus_per_run`: expected a finite number >= 0.0001. "
                                          "Received: cpus_per_run=1e-05."),
    (dict(name="ray", gpus_per_run=-1), "Invalid `gpus_per_run`: expected 0 or a finite number >= 0.0001. "
                                        "Received: gpus_per_run=-1. Pass --gpus-per-run 0."),
    (dict(name="ray", gpus_per_run=float("inf")), "Invalid `gpus_per_run`: expected 0 or a finite number"),
    (dict(name="ray", gpus_per_run=float("nan")), "Invalid `gpus_per_run`: expected 0 or a finite number"),
    # the executor merges KERAS_BACKEND into env_vars: it failed there, after Ray had started
    (dict(name="ray", runtime_env={"env_vars": 5}), "Invalid `runtime_env`: expected its \"env_vars\" a JSON "
                                                   "object of strings. Received: runtime_env={'env_vars': 5}."),
    (dict(name="ray", runtime_env={"env_vars": {"A": 1}}), "Invalid `runtime_env`: expected its \"env_vars\""),
    (dict(name="ray", retries=-2), "Invalid `retries`: expected an int >= 0. Received: retries=-2. "
                                   "Pass --retries 0 to leave lost runs to the next invocation."),
    (dict(name="ray", runtime_env=["pip"]), "Invalid `runtime_env`: expected a dict (JSON object). "
                                            "Received: runtime_env=['pip']."),
    # '' was taken for no address: $RAY_ADDRESS, else Ray started on this machine
    (dict(name="ray", address=""), "Invalid `address`: expected a non-empty address: 'local', 'auto', HOST:PORT "
                                   "or ray://HOST:PORT. Received: address=''. Pass one of them"),
])
def test_executor_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        make_executor(**kwargs)
    assert str(info.value).startswith(message)


def parse_executor(*argv):
    return cli.make_executor(cli.build_parser().parse_args(["compare", *argv]))


def test_cli_executor_options():
    assert parse_executor() == LocalExecutor()
    executor = parse_executor("--executor", "ray", "--address", "auto", "--cpus-per-run", "2",
                              "--retries", "1", "--ray-runtime-env", '{"pip": ["normlab[lab]"]}')
    assert executor == RayExecutor("auto", 2.0, 0.0, 1, {"pip": ["normlab[lab]"]})
    with pytest.raises(ConfigError, match="Invalid `cpus_per_run`"):
        parse_executor("--executor", "ray", "--cpus-per-run", "0")
    with pytest.raises(ConfigError, match="applies only to --executor ray"):
        parse_executor("--cpus-per-run", "2")


def test_cli_rejects_a_runtime_env_that_is_not_a_json_object(capsys):
    assert cli.main(["compare", "--ray-runtime-env", "[1]"]) == 2
    err = capsys.readouterr().err
    assert "Invalid `ray-runtime-env`: expected a JSON object. Received: '[1]'" in err


@pytest.mark.once  # Ray's own checks: the same on every backend
def test_ray_checks_the_runtime_env_and_the_address_before_the_first_run(tmp_path, capsys):
    """Both passed a dry run and failed once Ray had started: Ray's TypeError for {"pip": 5}, its
    "Invalid address format" for an address that is none of local, auto, HOST:PORT, ray://..."""
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=r"Invalid `runtime_env`: expected a runtime environment Ray takes\. "
                                         r"Received: runtime_env=\{'pip': 5\} \(Ray: .*pip"):
        RayExecutor("local", runtime_env={"pip": 5}).check()
    RayExecutor("local", runtime_env={"pip": ["normlab[lab]"]}).check()  # a valid one passes
    with pytest.raises(executors.ExecutorError, match=r"Invalid `address`: expected 'local', 'auto', HOST:PORT or "
                                                      r"ray://HOST:PORT\. Received: address='bogus'\."):
        RayExecutor("bogus").check()
    RayExecutor("auto")._check_fits({"CPU": 2.0})  # (auto: a cluster's; nothing probed for it here)
    out = tmp_path / "runs"
    assert cli.main(["compare", "--quick", "--executor", "ray", "--address", "bogus", "--dry-run",
                     "--out", str(out), "--no-progress"]) == 2
    assert "Invalid `address`" in capsys.readouterr().err and not out.exists()


def test_a_local_ray_instance_refuses_runs_that_ask_more_than_it_has():
    """--gpus-per-run 1 on a machine without a GPU waited for ever, silently."""
    with pytest.raises(executors.ExecutorError, match=r"Invalid `gpus_per_run`: expected at most the 0 GPUs of the "
                                                      r"local Ray instance\. Received: gpus_per_run=1; a run would wait"):
        RayExecutor("local", gpus_per_run=1)._check_fits({"CPU": 2.0})
    with pytest.raises(executors.ExecutorError, match=r"Invalid `cpus_per_run`: expected at most the 2 CPUs"):
        RayExecutor("local", cpus_per_run=3)._check_fits({"CPU": 2.0})
    RayExecutor("local", cpus_per_run=2, gpus_per_run=0.5)._check_fits({"CPU": 2.0, "GPU": 1.0})


def test_ray_missing_gives_the_install_command(monkeypatch, tmp_path, capsys):
    """At the first run, and before it: the command's check (a dry run too) imports Ray."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(executors.ExecutorError, match=r"pip install 'normlab\[ray\]'"):
        list(RayExecutor("local").run([]))
    with pytest.raises(executors.ExecutorError, match=r"pip install 'normlab\[ray\]'"):
        RayExecutor("local").check()
    assert cli.main(["compare", "--quick", "--executor", "ray", "--dry-run", "--out", str(tmp_path),
                     "--no-progress"]) == 2
    assert "The Ray executor needs Ray" in capsys.readouterr().err


class _UnreachableRay:
    @staticmethod
    def is_initialized():
        return False

    @staticmethod
    def init(**kwargs):
        raise ConnectionError(f"Could not find any running Ray instance at {kwargs['address']}")


def test_unreachable_cluster_names_the_address_and_the_fix():
    with socket.create_server(("127.0.0.1", 0)) as server:  # something listens, but Ray finds no cluster
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(executors.ExecutorError) as info:
            executors._connect(_UnreachableRay, address)
    message = str(info.value)
    assert message.startswith("Invalid `address`: expected a running Ray cluster there. "
                              f"Received: address='{address}' (ConnectionError: Could not find")
    assert "ray start --head" in message and "--address local" in message


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_fails_before_ray_and_the_first_run(scheme, tmp_path, capsys):
    """Ray retries such an address for as long as it is let (it printed its own warnings for
    9 minutes, the output folder locked): the executor refuses it before calling Ray, and the
    command runs that check first, in a dry run too (no output folder made)."""
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    with pytest.raises(executors.ExecutorError, match=rf"Received: address='{address}' \(no answer: "):
        RayExecutor(address).check()
    with pytest.raises(executors.ExecutorError, match="no answer"):  # refused before ray.init is called
        executors._connect(_UnreachableRay, address)
    out = tmp_path / "runs"
    assert cli.main(["compare", "--quick", "--executor", "ray", "--address", address, "--dry-run",
                     "--out", str(out), "--no-progress"]) == 2
    assert "expected a running Ray cluster there" in capsys.readouterr().err and not out.exists()


def test_write_run_and_write_error(tmp_path):
    config = RunConfig(label="BN", norms="batch")
    run_dir = tmp_path / "run"
    store.write_error(run_dir, config, "WorkerCrashedError: killed")
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    assert "WorkerCrashedError: killed" in (run_dir / "error.txt").read_text()
    assert not (run_dir / "summary.json").exists()
    store.write_run(run_dir, config, {"config.json": "{}\n", "metrics.jsonl": "{}\n"}, {"accuracy": 1})
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.jsonl",
                                                         "summary.json"]
    assert json.loads((run_dir / "summary.json").read_text()) == {"accuracy": 1}


def test_task_names_identify_the_run():
    config = RunConfig(experiment="compare", label="group(groups=5)", norms="group(groups=5)", seed=2)
    assert task_name(config) == "normlab:compare/group_groups=5/seed2"


# ------------------------------------------------------------------ a real local Ray instance

ray = None if BACKEND != "torch" else pytest.importorskip("ray", reason="Ray is not installed")
needs_ray = pytest.mark.skipif(
    BACKEND != "torch",
    reason="each Ray test starts a Ray instance and its workers: run once, in the torch process")

GRID = ["compare", "--norms", "batch(axis=3)", "group(groups=5, axis=3)", "--seeds", "2",
        "--set", "dataset=synthetic", "--set", "max_steps=150", "--set", "test_subset=100",
        "--set", "batch_size=16", "--backend", "torch", "--no-progress",
        "--executor", "ray", "--address", "local"]


def run_cli(out, *extra, kill=None, timeout=600):
    """Runs the grid with the Ray executor; with ``kill``, SIGKILLs that run's worker mid-run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch"}
    proc = subprocess.Popen([sys.executable, "-m", "normlab.lab.cli", *GRID, "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    if kill is not None:
        deadline = time.monotonic() + timeout
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            killed = worker_running(kill)
            time.sleep(0.05)
        if killed is not None:
            time.sleep(1.0)  # let it train for a while: killed mid-run, not at its start
            os.kill(killed, signal.SIGKILL)
    out_text, err_text = proc.communicate(timeout=timeout)
    return proc.returncode, out_text, err_text, killed


def worker_running(name):
    """The pid of the Ray worker whose process title is ``ray::<name>``, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(f"ray::{name}"):
            return int(entry.name)
    return None


@needs_ray
@pytest.mark.slow
def test_ray_grid_loses_only_the_killed_run_and_the_next_invocation_redoes_it(tmp_path):
    out = tmp_path / "runs"
    victim = RunConfig(experiment="compare-synthetic-test100-steps150-b16-norms-d1d215", label="group(groups=5, axis=3)",
                       norms="group(groups=5, axis=3)", seed=1)
    code, stdout, stderr, killed = run_cli(out, kill=task_name(victim))
    assert killed is not None, f"the run's worker never appeared:\n{stderr}"
    assert code == 1, stderr
    assert "4 runs on the Ray executor on a local Ray instance (1 CPU per run)" in stderr
    assert "LOST (" in stderr and "Rerun the same command to redo only them" in stderr

    root = out / "compare-synthetic-test100-steps150-b16-norms-d1d215"
    run_dirs = sorted(root.glob("*/*/seed*"))
    assert len(run_dirs) == 4
    (lost_dir,) = root.glob(f"{victim.slug}/*/seed1")
    assert not (lost_dir / "summary.json").exists()
    assert "run lost, to be redone" in (lost_dir / "error.txt").read_text()
    finished = {d: json.loads((d / "summary.json").read_text()) for d in run_dirs if d != lost_dir}
    assert len(finished) == 3
    for run_dir, summary in finished.items():
        assert summary["worker"]["executor"] == "ray" and summary["steps"] == 150
        assert summary["backend"] == "torch" and summary["worker"]["pid"] != os.getpid()
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == summary["epochs_run"]
        assert json.loads((run_dir / "config.json").read_text()) == summary["config"]
    # Two workers ran at once (1 CPU each on a 2-CPU instance).
    assert len({s["worker"]["pid"] for s in finished.values()}) == 2
    assert "| BatchNorm" not in stdout and "batch(axis=3)" in stdout  # report of what finished

    code, stdout, stderr, _ = run_cli(out)
    assert code == 0, stderr
    assert stderr.count("finished earlier, reused") == 3
    assert "1 run on the Ray executor" in stderr
    for run_dir, summary in finished.items():  # untouched
        assert json.loads((run_dir / "summary.json").read_text()) == summary
    redone = json.loads((lost_dir / "summary.json").read_text())
    assert redone["steps"] == 150 and not (lost_dir / "error.txt").exists()
    assert redone["worker"]["executor"] == "ray"

    # A Ray run trains exactly as a local one (same seed, same data order, same backend).
    code, _, stderr, _ = run_cli(tmp_path / "local", "--executor", "local")
    assert code == 2 and "Invalid `address`: it applies only to --executor ray" in stderr
    from normlab.lab.data import load_dataset
    from normlab.lab.training import run_one

    local = run_one(RunConfig(**redone["config"]), tmp_path / "local-run", load_dataset("synthetic"))
    assert local["loss"] == pytest.approx(redone["loss"], rel=2e-3)
    assert local["accuracy"] == pytest.approx(redone["accuracy"], abs=0.02)
