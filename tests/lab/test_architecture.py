"""The lab's layout beyond tests/test_architecture.py (size, cycles, private Keras APIs):
run-directory I/O and training below the executors, reports beside them, and no
framework imported at module level by what ``--help``, ``list`` and ``report`` load."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "normlab" / "lab"
MODULES = sorted(p.stem for p in LAB.glob("*.py") if p.stem != "__init__")


def imports(path: Path) -> set[str]:
    """Every normlab module a file imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("normlab")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normlab"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def lab_graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        targets = {i.split(".")[2] for i in imports(LAB / f"{name}.py") if i.startswith("normlab.lab.")}
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


@pytest.mark.parametrize("module, must_not", [
    ("store", {"executors", "runner", "training", "cli", "commands"}),
    ("training", {"executors", "runner", "cli", "commands"}),
    ("executors", {"runner", "cli", "commands"}),
    ("report", {"training", "executors", "runner", "cli", "commands", "backend"}),
    ("plots", {"training", "executors", "runner", "backend"}),
    ("experiments", {"store", "training", "executors", "runner", "data"}),
])
def test_dependencies_point_one_way(module, must_not):
    assert not lab_graph()[module] & must_not
    assert {"store", "training"} <= lab_graph()["executors"]


def test_report_plots_and_cli_import_no_framework_at_module_level():
    heavy = ("keras", "jax", "torch", "tensorflow", "numpy", "matplotlib", "rich", "sklearn", "scipy")
    for name in ("cli", "commands", "experiments", "presets", "errors", "store", "stats", "report",
                 "report_text", "plots", "preflight", "models", "backend", "runner"):
        tree = ast.parse((LAB / f"{name}.py").read_text())
        for node in tree.body:  # module level only; functions import lazily
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in heavy], (name, names)
