"""Records every cell of the export matrix to a JSON file.

Each test of ``test_export_matrix.py`` attaches its cell (route, case, max
difference, error) to its report; at the end of the session the cells go
to ``$NORMLAB_EXPORT_RESULTS/<backend>.json`` when that variable names a
directory, else to a new temporary directory (printed in the summary),
never into the repository. ``docs/scripts/deploy_matrix.py`` renders
docs/deploying.md's tables from these files.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import tempfile

import keras
import pytest

RESULTS_ENV = "NORMLAB_EXPORT_RESULTS"
_CELLS = pytest.StashKey[dict]()
_PATH = pytest.StashKey[pathlib.Path]()

#: Packages whose versions decide the matrix; written beside the cells.
PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "onnx", "onnxruntime", "onnxscript",
            "tf2onnx", "jax2onnx", "openvino", "ai-edge-litert", "litert-torch", "numpy")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def pytest_configure(config):
    config.stash[_CELLS] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    properties = dict(item.user_properties)
    if "export_cell" not in properties:
        return
    entry = item.config.stash[_CELLS].setdefault(properties["export_cell"]["id"], dict(properties["export_cell"]))
    entry["duration_s"] = round(entry.get("duration_s", 0.0) + report.duration, 2)  # setup, call and teardown
    if report.when != "call" and report.passed:
        return
    if hasattr(report, "wasxfail"):
        entry["status"] = "xfail"
        entry.setdefault("reason", report.wasxfail)
    elif report.skipped:
        entry["status"] = "skipped"
        longrepr = report.longrepr
        entry["reason"] = longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed:
        entry["status"] = "failed"
        entry["reason"] = str(report.longrepr).strip().splitlines()[-1][:500]
    else:
        entry["status"] = "ok"
    entry.update(properties.get("export_result", {}))


def pytest_sessionfinish(session):
    cells = session.config.stash[_CELLS]
    if not cells:
        return
    from tests.export import _cases, _formats

    directory = os.environ.get(RESULTS_ENV) or tempfile.mkdtemp(prefix="normlab-export-")
    path = pathlib.Path(directory) / f"{keras.backend.backend()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "backend": keras.backend.backend(),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "versions": _versions(),
        "seconds": round(sum(cell["duration_s"] for cell in cells.values()), 1),
        "cases": {case.id: case.spec for case in _cases.CASES},
        "routes": {route.id: list(route.backends) for route in _formats.ROUTES},
        "cells": dict(sorted(cells.items())),
    }, indent=1) + "\n")
    session.config.stash[_PATH] = path


def pytest_terminal_summary(terminalreporter, config):
    path = config.stash.get(_PATH, None)
    if path is not None:
        terminalreporter.write_line(f"export matrix: {path} (render: python docs/scripts/deploy_matrix.py {path.parent})")
