"""The package's layout rules, checked on its source (nothing is imported).

ops -> backends; layers -> ops; lab -> registry -> layers; nothing runs
back up. Every import counts, including those inside functions, which is
where cycles hide.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "normlab"
MODULES = {p: ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
           for p in sorted(ROOT.rglob("*.py"))}
MAX_LINES = 400

#: Packages a layer of the library may not import (the arrows that would run back up).
FORBIDDEN = {
    "normlab.ops": ("normlab.layers", "normlab.lab", "normlab.registry", "normlab.testing", "normlab.viz"),
    "normlab.backends": ("normlab.layers", "normlab.lab", "normlab.registry", "normlab.testing"),
    "normlab.layers": ("normlab.lab", "normlab.registry", "normlab.testing", "normlab.viz"),
    "normlab.registry": ("normlab.lab", "normlab.testing"),
    "normlab.lab": ("normlab.testing",),
    "normlab.viz": ("normlab.testing",),
}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _internal(path: Path) -> set[str]:
    known = set(MODULES.values())
    return {name for name in _imports(path) if name in known and name != MODULES[path]}


@pytest.mark.parametrize("path", sorted(MODULES), ids=lambda p: MODULES[p])
def test_no_module_is_longer_than_a_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[path]} has {lines} lines: split it by responsibility"


@pytest.mark.parametrize("path", sorted(MODULES), ids=lambda p: MODULES[p])
def test_no_arrow_runs_back_up(path):
    module = MODULES[path]
    for package, forbidden in FORBIDDEN.items():
        if module == package or module.startswith(package + "."):
            bad = sorted(name for name in _internal(path) if name.startswith(forbidden))
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycles():
    graph = {MODULES[p]: {n for n in _internal(p) if n != "normlab"} for p in MODULES}
    # Importing a package runs its __init__; edges into a package's face are not cycles of code.
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("path", sorted(MODULES), ids=lambda p: MODULES[p])
def test_private_keras_apis_only_in_compat(path):
    if MODULES[path] == "normlab._compat":
        return
    private = sorted(name for name in _imports(path) if name.startswith("keras.src"))
    assert not private, f"{MODULES[path]} imports {private}: wrap it in normlab/_compat.py"
