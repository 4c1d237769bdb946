"""The lab's user-facing errors and its optional dependencies.

Every error a user can fix is a :class:`LabError`: the command line prints it
as one ``normlab: error: ...`` line (argument, value received, the fix) and
exits with status 2, without a traceback. Anything else is a bug and keeps its
traceback.

The lab's own dependencies (matplotlib for plots, rich for progress bars,
scikit-learn for the bundled digits) come with ``pip install 'normlab[lab]'``;
:func:`require` imports one of them or says how to install it.

This module imports nothing outside the standard library.
"""

from __future__ import annotations

import importlib
import importlib.util

#: Import name -> (pip name, what the lab uses it for).
OPTIONAL = {
    "matplotlib": ("matplotlib", "plots"),
    "rich": ("rich", "progress bars"),
    "sklearn": ("scikit-learn", "the bundled 8x8 digits dataset"),
}


class LabError(Exception):
    """A problem the user can fix (bad argument, missing file, busy output folder)."""


class ConfigError(LabError, ValueError):
    """An invalid configuration value (also a ``ValueError``, as before)."""


class MissingDependency(LabError, ImportError):
    """A package of the ``lab`` extra is not installed."""


#: What an empty folder argument is refused for (:func:`empty_value`).
FOLDER = "a non-empty folder path (an empty one would be the current folder)"
#: What an empty Ray address is refused for, and the fix.
ADDRESS = "a non-empty address: 'local', 'auto', HOST:PORT or ray://HOST:PORT"
ADDRESS_FIX = "Pass one of them, or leave --address out for $RAY_ADDRESS, else local."


def empty_value(key: str, expected: str, fix: str) -> str:
    """The message refusing an empty ``key``: a value that would silently mean another
    (an empty folder path the current folder, an empty Ray address Ray on this machine).

    Example:
        >>> from normlab.lab.errors import FOLDER, empty_value
        >>> print(empty_value("address", "an address", "Pass one."))
        Invalid `address`: expected an address. Received: address=''. Pass one.
    """
    return f"Invalid `{key}`: expected {expected}. Received: {key}=''. {fix}"


def missing(module: str) -> MissingDependency:
    """The error for an optional dependency that is not installed."""
    package, purpose = OPTIONAL.get(module, (module, "this"))
    return MissingDependency(
        f"the lab needs {package} for {purpose}, and it is not installed. "
        f"Install the lab's dependencies: pip install 'normlab[lab]' (or pip install {package})."
    )


def available(module: str) -> bool:
    """True if ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str):
    """Imports an optional dependency, or raises :class:`MissingDependency` naming the extra.

    Example:
        >>> from normlab.lab.errors import require
        >>> require("json").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module) from None
