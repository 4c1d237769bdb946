"""Optional per-backend fast paths for the functional ops.

A fast path is a function in ``normlab/backends/<backend>.py`` named after
the op it accelerates. The general path in :mod:`normlab.ops` calls it first
with already-validated arguments; the hook either returns the result or
returns ``None`` to decline (a layout, dtype or axis it cannot serve
exactly), in which case the general path runs. Hooks never validate user
input and never change results beyond float rounding: each has a parity
test against the general path (``tests/backends``).

Hook contract (arguments after ``x`` keyword-only, all axes non-negative,
groups already resolved, ``gamma`` and ``beta`` either None or 1-D of the
feature size):

* ``group_norm(x, *, groups, axis, gamma, beta, epsilon) -> y | None``
* ``layer_norm(x, *, axes, gamma, beta, epsilon) -> y | None``
  (``gamma``/``beta`` have the shape of ``x`` at ``axes``)
* ``rms_norm(x, *, axes, gamma, beta, epsilon) -> y | None``
  (``y = x * rsqrt(mean(x^2 over axes) + epsilon) * gamma + beta``; the
  torch hook serves trailing axes, with Triton on CUDA and the compiled
  kernels on the CPU; JAX's has a closed-form backward,
  :mod:`normlab.backends.jax_rms_norm`; TensorFlow's serves trailing axes,
  :mod:`normlab.backends.tensorflow_layer_norm`)
* ``batch_norm_train(x, *, axis, gamma, beta, epsilon) -> (y, mean, variance) | None``
  (``mean``/``variance`` of shape ``(C,)``, biased variance, float32 at least)
* ``batch_norm_infer(x, *, axis, mean, variance, gamma, beta, epsilon) -> y | None``
  (given statistics, e.g. the moving averages: ``mean``/``variance`` of
  shape ``(C,)``; ``y = (x - mean) * rsqrt(variance + epsilon) * gamma + beta``
  with ``x - mean`` formed first; torch: CPU tensors, by the compiled
  kernels, declining statistics that need a gradient; TensorFlow:
  channels-last data, by the fused NHWC kernel on ``x - mean``; JAX: eager
  calls, as one jitted call)

Whether a hook serves an input depends only on what is known before any
data is read (backend, dtype, shape, layout, whether a compiler or exporter
is tracing), never on a tensor's value: a hook reads nothing on the host
(no ``.item()``, ``bool(tensor)``, ``float(tensor)``, ``.tolist()``, no
Python branch on data), in its forward and its backward, so it costs no
device sync and no data-dependent guard under ``torch.compile``, and traces
under ``jax.jit`` and ``tf.function``. Exactness is decided inside the graph
(``lax.cond``/``tf.cond``) or needs no decision (a shift that bounds every
kernel's error). One exception: an eager ``tf.cond`` evaluates its
predicate on the host, so TensorFlow's hooks decide there in the calls
that stay eager (a signature's first two, batch norm inference inputs over 2**20 elements,
nested or persistent tapes, forward accumulators, signatures past the
sixteen graphs a hook keeps: :mod:`normlab.backends.tensorflow_eager`); in every graph
(``tf.function``, ``fit``, exporters) they decide on the device. The
numerics policy, with its bounds and why each backend's statistics are
exact, is :mod:`normlab.backends.policy`; ``tests/backends/test_no_host_sync.py``,
``tests/backends/test_tf_eager.py`` and ``tests/compile`` enforce it.

Fast paths can be switched off with the environment variable
``NORMLAB_FAST_PATHS=0`` (or ``false``, ``off``, ``no``; another value is an
error, see :func:`switch`) or, for a block of code, with :func:`disabled`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Any, Callable, Iterator

import keras

_state = threading.local()
_modules: dict[str, object] = {}


def switch(name: str) -> bool:
    """Whether the environment variable ``name`` leaves its feature on: unset,
    empty, ``1``, ``true``, ``on`` or ``yes`` (any case); off for ``0``,
    ``false``, ``off`` or ``no``. Any other value is an error, not a guess."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in ("", "1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"Invalid `{name}`: expected 0 or 1 (or false/true, off/on, no/yes). Received: "
                     f"{name}={raw!r}. Set {name}=0 to turn the feature off, or unset it.")


def enabled() -> bool:
    """Whether fast paths are currently allowed to run."""
    if not switch("NORMLAB_FAST_PATHS"):
        return False
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def thread_setting(state: threading.local, name: str, value: object, default: object) -> Iterator[None]:
    """Context manager: ``state.<name>`` is ``value`` in this thread inside the block
    (``default`` where it was never set), then what it was."""
    previous = getattr(state, name, default)
    setattr(state, name, value)
    try:
        yield
    finally:
        setattr(state, name, previous)


def disabled() -> contextlib.AbstractContextManager[None]:
    """Context manager: run only the general path inside the block.

    The setting is per thread, as ``torch.no_grad()``: a thread started
    elsewhere (``tf.distribute.MirroredStrategy``'s replica threads, a data
    loader's workers) keeps the fast paths; enter the block inside the
    function that thread runs (``strategy.run``'s function, say).
    """
    return thread_setting(_state, "enabled", False, True)


def torch_traced() -> bool:
    """Whether torch traces this call (compilers, exporters, function
    transforms; :func:`normlab.backends.torch_guards.traced`); False on the
    other backends, without importing torch."""
    if keras.backend.backend() != "torch":
        return False
    from normlab.backends.torch_guards import traced

    return traced()


def torch_tensor_in_place(x: object) -> bool:
    """Whether ``x`` is a torch tensor already on Keras' device (it needs no
    conversion; :func:`normlab.backends.torch_guards.at_keras_device`);
    False on the other backends, without importing torch."""
    if keras.backend.backend() != "torch" or type(x).__name__ not in ("Tensor", "Parameter"):
        return False
    from normlab.backends.torch_guards import at_keras_device

    return bool(at_keras_device(x))


def saved_for_backward(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its results saved for the backward pass, never recomputed there.

    For values read from state that the same call then updates in place
    (batch renormalization's ``r`` and ``d``, read from the renorm moving
    averages). ``torch.compile``'s partitioner may recompute a cheap value in
    the backward from the forward's inputs instead of saving it; the update
    has written those inputs by then, so the gradient would use the new
    state (the fix, pull request pytorch/pytorch#197039, is not in torch
    2.13). While torch compiles, ``fn`` runs as a region of selective
    activation checkpointing whose every op is ``MUST_SAVE``; anywhere else (eager torch, exporters, JAX,
    TensorFlow) it is a plain call: their backward passes keep the values
    the forward read. Not a fast path: it runs with the fast paths off too.
    """
    if keras.backend.backend() != "torch":
        return fn(*args)
    from normlab.backends.torch_guards import saved_for_backward as torch_saved

    return torch_saved(fn, *args)


def _backend_module(name: str):
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"normlab.backends.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"normlab.backends.{name}":
                raise
            _modules[name] = None
    return _modules[name]


def fast_path(op: str, *, epsilon: float):
    """Returns the current backend's hook for ``op``, or None.

    None when ``epsilon`` is 0: only the general path defines the output of
    a zero-variance slice then (see :func:`normlab.ops.normalize.inverse_std`).
    """
    if not enabled() or not epsilon > 0:
        return None
    module = _backend_module(keras.backend.backend())
    return getattr(module, op, None) if module is not None else None


# The current backend's hooks are imported with the package, not on the first
# fast_path() call: that call may be traced, and torch.compile cannot trace an
# import (a graph break inside the layer's call, which split Keras' compiled
# train step so that inductor failed on a symbolic stride: "cannot determine
# truth value of Relational: 1 < s69" with a final partial batch).
_backend_module(keras.backend.backend())
