"""Choosing a Keras backend when the user has not.

Keras reads ``KERAS_BACKEND`` (or ``~/.keras/keras.json``) once, at import,
and falls back to TensorFlow. A user with only PyTorch or only JAX installed
would then fail at ``import keras``. :func:`choose_default_backend` runs
before normlab imports Keras: when neither the variable nor the config file
names a backend and TensorFlow is not installed, it picks an installed one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

#: Order in which an installed backend is picked when none is configured.
PREFERENCE = ("tensorflow", "jax", "torch")


def configured_backend() -> str | None:
    """The backend named by ``KERAS_BACKEND`` or Keras' config file, if any."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend")
    except (OSError, ValueError):
        return None


def installed_backends() -> list[str]:
    """Backends whose package is importable, in :data:`PREFERENCE` order."""
    return [name for name in PREFERENCE if importlib.util.find_spec(name) is not None]


def choose_default_backend() -> str | None:
    """Sets ``KERAS_BACKEND`` to an installed backend if nothing chose one yet.

    Returns the backend it set, or None when it left things alone (a backend
    is configured, Keras is already imported, or nothing is installed).
    """
    if "keras" in sys.modules or configured_backend():
        return None
    installed = installed_backends()
    if not installed or installed[0] == "tensorflow":
        return None  # Keras' own default works
    os.environ["KERAS_BACKEND"] = installed[0]
    return installed[0]
