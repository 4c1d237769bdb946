"""docs/scripts/deploy_matrix.py renders the export tests' result files, and
docs/deploying.md holds a matrix with a row for every layer the tests export."""

from __future__ import annotations

import pathlib

from tests.docs._scripts import load_script
from tests.export import _cases

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _results():
    cases = {"group": "group(groups=4)", "layer": "layer"}
    routes = {"onnx": ["tensorflow", "torch"], "torch": ["torch"]}
    return {
        "tensorflow": {"cases": cases, "routes": routes, "versions": {"keras": "3.15.1"}, "cells": {
            "onnx/group": {"status": "ok", "max_abs_diff": 7.2e-07},
            "onnx/layer": {"status": "xfail", "reason": "onnxruntime.capi.X.InvalidGraph: 'No Op'. Why."},
            "numpy-backend/group": {"status": "skipped", "reason": "backend-independent: runs once, in the torch test run"},
        }},
        "torch": {"cases": cases, "routes": routes, "versions": {"torch": "2.13"}, "cells": {
            "onnx/group": {"status": "ok", "max_abs_diff": 0.0, "note": "Exported alone: why."},
            "onnx/layer": {"status": "failed", "reason": "AssertionError: differs"},
            "torch/group": {"status": "skipped", "reason": "litert_torch is not installed: needed"},
            "numpy-backend/group": {"status": "ok", "max_abs_diff": 9.5e-07},
        }},
    }


def test_render_marks_every_status():
    text = load_script("deploy_matrix").render(_results())
    assert "**TensorFlow backend**" in text and "**PyTorch backend**" in text
    assert "| `group(groups=4)` | ✓ 7.2e-07 |" in text  # TensorFlow: onnx only
    assert "| `group(groups=4)` | ✓ 0 (b) | – (c) |" in text  # PyTorch: onnx, torch
    assert "| `layer` | ✗ (a) |" in text
    assert "**FAILED**" in text
    assert "- (a) `onnxruntime.capi.X.InvalidGraph`: 'No Op'. Why." in text
    assert "| `group(groups=4)` | ✓ 9.5e-07 | not run |" in text  # the once-run cell comes from torch's file
    assert "keras 3.15.1" in text and "torch 2.13" in text


def test_update_writes_between_the_markers(tmp_path):
    script = load_script("deploy_matrix")
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- deploy-matrix -->\nold\n<!-- /deploy-matrix -->\noutro\n")
    assert script.update(_results(), check=True, page=page)
    assert "old" in page.read_text()
    assert script.update(_results(), page=page)
    text = page.read_text()
    assert text.startswith("intro\n<!-- deploy-matrix -->\n**TensorFlow backend**") and text.endswith("<!-- /deploy-matrix -->\noutro\n")
    assert not script.update(_results(), check=True, page=page)


def test_page_has_a_row_for_every_layer():
    text = (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")
    block = text.split("<!-- deploy-matrix -->")[1].split("<!-- /deploy-matrix -->")[0]
    missing = [case.spec for case in _cases.CASES if f"| `{case.spec}` |" not in block]
    assert not missing, (f"docs/deploying.md has no row for {missing}: "
                         "run `python docs/scripts/deploy_matrix.py --run`")
