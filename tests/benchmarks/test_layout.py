"""The benchmark package's own rules: short modules, no framework imported at module level."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "benchmarks" / "normbench"
MODULES = sorted(PACKAGE.glob("*.py"))
FRAMEWORKS = ("torch", "jax", "jaxlib", "tensorflow", "keras", "normlab")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_short(path):
    assert len(path.read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_framework_at_module_level(path):
    """Frameworks are imported inside the functions that use them (the worker's), so the
    driver, the comparison and these tests load none of them."""
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        bad = [n for n in names if n.split(".")[0] in FRAMEWORKS]
        assert not bad, f"{path.name} imports {bad} at module level"
