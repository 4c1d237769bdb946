"""Entry point of the ``normlab`` command, kept outside the ``normlab`` package.

Importing ``normlab`` registers every layer with Keras' serialization, which
imports Keras and a backend: seconds before ``normlab --help`` could answer.
The command line parses and checks its arguments without either
(:mod:`normlab.lab.cli`), so this module makes ``normlab`` importable as a
bare package whose ``__init__`` has not run: its submodules load on demand,
and the first attribute that only ``normlab/__init__.py`` defines (a layer
name, ``normlab.__version__``) runs it in place, completing the package.
"""

from __future__ import annotations

import importlib.util
import sys


def _light_package() -> None:
    """Installs ``normlab`` in ``sys.modules`` without running its ``__init__``."""
    if "normlab" in sys.modules:
        return
    spec = importlib.util.find_spec("normlab")
    if spec is None or spec.loader is None:
        return  # let the import below fail with Python's own message
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str):
        """A submodule (``from normlab import layers``) is imported; any other
        name runs ``normlab/__init__.py`` in the bare package, once, then answers."""
        if importlib.util.find_spec(f"normlab.{name}") is not None:
            return importlib.import_module(f"normlab.{name}")
        package.__dict__.pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["normlab"] = package


def main(argv: list[str] | None = None) -> int:
    """Runs ``normlab`` with ``argv`` (default: the process's arguments)."""
    _light_package()
    from normlab.lab.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
