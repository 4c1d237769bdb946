"""Runs a backend's worker in fresh processes and collects its per-check results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600


def _env(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), GLOO_SOCKET_IFNAME="lo")
    env.pop("XLA_FLAGS", None)  # the JAX worker sets its own device count
    return env


def _parse(stdout: str, label: str) -> dict:
    results = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            record["detail"] = f"[{label}] {record['detail']}" if record["detail"] else ""
            results[record["case"]] = record
    return results


def run_worker(module: str, backend: str) -> tuple[dict, str]:
    """One worker process; returns ``({case: record}, log)``."""
    proc = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=_env(backend),
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    log = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return _parse(proc.stdout, module), log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(module: str, backend: str, world: int) -> tuple[dict, str]:
    """``world`` worker processes (ranks) at once; a case passes only if it passes on every rank."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, str(rank), str(world), port], cwd=ROOT, env=_env(backend),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(world)
    ]
    results, logs = {}, []
    try:
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs)):
        logs.append(f"rank {rank}: exit {proc.returncode}\n{stdout}\n{stderr[-4000:]}")
        for case, record in _parse(stdout, f"rank {rank}").items():
            if case not in results or not record["ok"]:
                results[case] = record
    return results, "\n".join(logs)


def check(results: dict, log: str, case: str) -> None:
    if case not in results:
        raise AssertionError(f"the worker reported nothing for {case!r}:\n{log}")
    record = results[case]
    assert record["ok"], record["detail"]
