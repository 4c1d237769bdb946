"""Loads a script of docs/scripts as a module, for the tests of its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "docs" / "scripts"


def load_script(name: str) -> ModuleType:
    """``docs/scripts/<name>.py``, executed as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"docs_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
