"""Choosing the Keras backend for the lab, and starting Keras quietly.

Keras reads ``KERAS_BACKEND`` once, at import, so the command line chooses
before anything imports Keras, in the order ``--backend``, then
``$KERAS_BACKEND`` or ``~/.keras/keras.json``, then the first installed
backend of :data:`normlab._backend.PREFERENCE` (the same list ``import
normlab`` uses; found without importing it). :func:`import_keras` then imports
Keras with the backends' start-up log lines (TensorFlow's absl and CPU-feature
lines) hidden, unless ``verbose``; if the import fails, they are shown.

This module imports no deep-learning framework until :func:`import_keras`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Any, Iterator

from normlab._backend import PREFERENCE, configured_backend
from normlab.lab.errors import LabError

BACKENDS = tuple(PREFERENCE)
_REEXEC = "_NORMLAB_CLI_BACKEND_REASON"


class BackendError(LabError):
    """No usable backend, an unknown one, or Keras already running another one."""


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_backend(requested: str | None = None, environ=None, installed=None,
                   check_loaded: bool = True) -> tuple[str, str]:
    """Chooses the Keras backend and sets ``KERAS_BACKEND``; returns (backend, why).

    Args:
        requested: ``--backend``, if given.
        environ: the environment to read and set (default ``os.environ``; with
            ``os.environ`` Keras' config file is read too).
        installed: ``name -> bool`` (default: whether the package can be found).
        check_loaded: refuse a backend other than the one Keras already runs on.
    """
    environ = os.environ if environ is None else environ
    installed = installed or _installed
    configured = configured_backend() if environ is os.environ else environ.get("KERAS_BACKEND")
    if requested:
        backend, why = requested, "from --backend"
    elif configured:
        source = "KERAS_BACKEND" if environ.get("KERAS_BACKEND") else "~/.keras/keras.json"
        backend, why = configured, f"from {source}"
    else:
        found = [name for name in BACKENDS if installed(name)]
        if not found:
            raise BackendError(
                f"no Keras backend is installed (looked for {', '.join(BACKENDS)}). "
                "Install one: pip install 'normlab[jax]' (or [torch], or [tensorflow]).")
        backend = found[0]
        why = f"auto-selected: the first installed of {', '.join(BACKENDS)}"
    if backend not in BACKENDS:
        fix = ("" if requested else " (or set KERAS_BACKEND to one of them)" if source == "KERAS_BACKEND"
               else ' (or set "backend" in ~/.keras/keras.json to one of them)')
        raise BackendError(
            f"Invalid `backend`: expected one of {', '.join(BACKENDS)}. "
            f"Received: backend={backend!r} ({why}). Pass --backend jax, torch or tensorflow{fix}.")
    keras = sys.modules.get("keras")
    if check_loaded and keras is not None and keras.backend.backend() != backend:
        raise BackendError(
            f"Invalid `backend`: Keras is already running on {keras.backend.backend()!r} in "
            f"this process. Received: backend={backend!r}. Start a new process.")
    environ["KERAS_BACKEND"] = backend
    return backend, why


def use_backend(requested: str | None, argv: list[str] | None) -> tuple[str, str]:
    """:func:`select_backend`, restarting the program once if Keras was loaded too early.

    Keras cannot switch backends in a running process. If something imported it
    before the command line could choose (``import normlab`` does, today), the
    ``normlab`` program (``argv is None``) re-executes itself with
    ``KERAS_BACKEND`` set; a caller passing ``argv`` (tests, notebooks) gets the
    error instead.
    """
    if os.environ.get(_REEXEC):
        return select_backend(requested)[0], os.environ.pop(_REEXEC)
    keras = sys.modules.get("keras")
    if argv is None and keras is not None:
        env = dict(os.environ)
        backend, why = select_backend(requested, env, check_loaded=False)
        if keras.backend.backend() != backend:
            env[_REEXEC] = why
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "normlab.lab.cli", *sys.argv[1:]], env)
    return select_backend(requested)


@contextlib.contextmanager
def quiet_stderr(verbose: bool = False):
    """Hides what is written to file descriptor 2 (C++ logging too); shows it on error
    (not on Ctrl-C: the user stopped it, and the one line saying so is enough)."""
    if verbose or os.environ.get("NORMLAB_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except KeyboardInterrupt:
            raise
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read()[-20_000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_keras(verbose: bool = False):
    """Imports Keras (and so its backend) without the backends' log lines; returns it.

    Raises:
        BackendError: the backend failed to import (the hidden output is shown).
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with quiet_stderr(verbose or "keras" in sys.modules):
            import keras

            import normlab  # noqa: F401 - its layers, registry and backend fast paths
    except Exception as exc:  # noqa: BLE001 - any failure to start the backend
        raise BackendError(
            f"Keras could not start the {os.environ.get('KERAS_BACKEND', '?')!r} backend "
            f"({type(exc).__name__}: {exc}). Reinstall it, or pass another --backend.") from None
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    return keras


#: The loggers :func:`import_keras` quiets (the Python side of the backends' start-up lines).
QUIET_LOGGERS = ("absl", "tensorflow", "jax._src.xla_bridge")
#: The environment variables a command sets for itself and its workers.
LAB_ENVIRONMENT = ("NORMLAB_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Undoes, when the block ends, what a command changes in its process for its own
    sake: the levels of :data:`QUIET_LOGGERS`, :data:`LAB_ENVIRONMENT`, and the global
    random generators every run seeds (Python's, NumPy's and torch's; one first imported
    in the block is reseeded from the system's entropy, as a fresh import is), so that
    ``normlab.lab.cli.main(argv)`` called from Python (a notebook, a test) leaves its
    caller's process as it found it. So are Keras' global state, which each run's
    ``keras.backend.clear_session`` replaces (layer-name counters, the seed and global
    dtype policy the caller set), and TensorFlow's global seed, which is set again to the
    caller's (its sequence of operation seeds starts over, as after the caller's
    ``tf.random.set_seed``)."""
    import random

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    environment = {name: os.environ.get(name) for name in LAB_ENVIRONMENT}
    python_state = random.getstate()
    numpy: Any = sys.modules.get("numpy")
    torch: Any = sys.modules.get("torch")
    numpy_state = None if numpy is None else numpy.random.get_state()
    torch_state = None if torch is None else torch.get_rng_state()
    keras_state = None
    if "keras" in sys.modules:  # (importing normlab's Keras wrappers first would import Keras and a backend)
        from normlab import _compat

        keras_state = _compat.keras_global_state()
    tensorflow_seed = _tensorflow_global_seed() if "tensorflow" in sys.modules else None
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(python_state)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)
        elif "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if torch_state is not None:
            torch.set_rng_state(torch_state)
        elif "torch" in sys.modules:
            sys.modules["torch"].seed()
        if "keras" in sys.modules:
            from normlab import _compat

            _compat.restore_keras_global_state(keras_state)
        if "tensorflow" in sys.modules:
            sys.modules["tensorflow"].random.set_seed(tensorflow_seed)


def _tensorflow_global_seed() -> int | None:
    """TensorFlow's global seed (``tf.random.set_seed``'s), for a process that has
    imported TensorFlow already, read without drawing an operation seed
    (``tf.compat.v1.get_seed`` draws one)."""
    from tensorflow.python.eager import context

    seed: int | None = context.global_seed()
    return seed
