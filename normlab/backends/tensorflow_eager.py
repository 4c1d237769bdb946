"""TensorFlow's fast paths in eager execution: one graph call instead of dozens of ops.

Eagerly, TensorFlow dispatches every op from Python: a group norm's fast path
is some sixty ops, about 20 us each, so a small tensor took 2.6 ms where
Keras' layer (fewer ops) took 1.0 ms. :func:`graph_when_hot` runs a hook as a
``tf.function`` once the same call (its input's shape and dtype, the
parameters' shapes and dtypes, the other arguments) has run eagerly
:data:`HOT_AFTER` times: one trace (tens of milliseconds), then one function
call (0.4 ms there, forward and backward 4x faster). Calls made once, such as
the first eager call of a model about to be compiled by ``fit``, never pay
for a trace.

The hook makes its eager choices in that graph (it is traced inside
:func:`~normlab.backends.tensorflow_stats.eager_graph`): the ones it makes in
other graphs are for exporters, which never read this one (layer norm over
non-trailing axes, batch norm inference on 2-D and 5-D inputs). A signature
whose graph declines anyway stays eager.

A call stays eager where the graph would not serve it as well:

* batch norm's inputs in inference of more than :data:`MAX_ELEMENTS`
  elements: there a graph measured no faster (one fused kernel either way).
  The other hooks take their graph at any size (``any_size``): at
  (8, 56, 56, 256) and (32, 28, 28, 64) group and instance norm ran
  1.4-2.25x faster forward and forward+backward than their eager ops, layer
  and RMS norm at (16 and 64, 512, 768) 1.05-1.5x (their graph sums squares
  by ``EuclideanNorm``, as the eager ops do), batch norm in training 1.2-1.4x
  forward and 1.0-1.3x forward+backward;
* inputs a tape may differentiate twice (nested or persistent
  ``GradientTape``s: the gradient of ``EuclideanNorm``'s gradient is NaN in a
  graph) or a ``tf.autodiff.ForwardAccumulator`` watches (forward mode does
  not pass through these functions' custom gradients); this is read from
  TensorFlow's tape set, and where TensorFlow no longer offers that, every
  call stays eager.

Each hook traces at most :data:`MAX_GRAPHS` signatures in a process; later
signatures stay eager. Each graph kept holds its memory (its custom
gradient lives as long as it does:
:mod:`~normlab.backends.tensorflow_gradients`), so eager work over many
shapes (sequence lengths) would otherwise grow without bound, and with more
signatures in turn than graphs kept, trace again and again (tens of
milliseconds a trace).
Gradients flow through the function as through the eager ops (the hooks'
``tf.custom_gradient`` is traced with them), to the input, the parameters and
the variables they were read from.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable

import tensorflow as tf

from normlab.backends.tensorflow_stats import eager_graph, param, tape_order

#: Eager calls of one signature before it runs as a ``tf.function``.
HOT_AFTER = 2
#: Inputs larger than this stay eager: dispatch is a small share of their time.
MAX_ELEMENTS = 1 << 20
#: Signatures traced per hook in a process; signatures counted (least recently seen dropped).
MAX_GRAPHS, _MAX_COUNTED = 16, 256


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _first_order_only(tensors: list[Any]) -> bool:
    """Whether no tape may take a second derivative through ``tensors`` and no
    forward accumulator watches them (False where TensorFlow cannot say)."""
    order = tape_order(tensors)
    return order is not None and order < 2 and _forward_watched(tensors) is False


def _forward_watched(tensors: list[Any]) -> bool | None:
    """Whether a forward accumulator (``tf.autodiff.ForwardAccumulator``)
    watches any of ``tensors``; None where TensorFlow cannot say."""
    try:
        from tensorflow.python.eager import forwardprop_util

        return bool(forwardprop_util.pack_tangents(tensors).tangents)
    except (ImportError, AttributeError):  # a private module
        return None


def graph_when_hot(hook: Callable[..., Any], *, any_size: bool = False) -> Callable[..., Any]:
    """``hook`` (a fast path: ``hook(x, **kwargs) -> result | None``), run as a
    ``tf.function`` from its :data:`HOT_AFTER`-th eager call with one signature on,
    for inputs of at most :data:`MAX_ELEMENTS` elements unless ``any_size``; in
    a graph as it is, or declined where a forward accumulator watches the input."""
    seen: collections.OrderedDict[tuple, int] = collections.OrderedDict()
    compiled: dict[tuple, Any] = {}  # None: declines, stays eager
    lock = threading.Lock()

    @functools.wraps(hook)
    def call(x: Any, **kwargs: Any) -> Any:
        if not tf.executing_eagerly():
            # (forward-mode AD cannot pass the hooks' nested tf.cond in a graph: cond_v2
            # fails an assertion; eagerly the conditions are Python's)
            watched = _forward_watched([x, *(v for v in kwargs.values() if isinstance(v, tf.Tensor))])
            return None if watched else hook(x, **kwargs)
        size = x.shape.num_elements() if isinstance(x, tf.Tensor) else None
        if size is None or (not any_size and size > MAX_ELEMENTS):
            return hook(x, **kwargs)
        names = tuple(k for k, v in kwargs.items() if _is_tensor(v))
        tensors = [param(kwargs[k]) for k in names]  # read here: a variable's gradient is recorded
        if not _first_order_only([x, *tensors]):
            return hook(x, **kwargs)
        static = {k: v for k, v in kwargs.items() if k not in names}
        key = (tuple(x.shape), x.dtype, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in static.items()),
               names, tuple((tuple(t.shape), t.dtype) for t in tensors))
        with lock:
            fn = compiled.get(key, False)
            if fn is False:  # not traced
                if len(compiled) >= MAX_GRAPHS:
                    return hook(x, **kwargs)
                seen[key] = seen.pop(key, 0) + 1
                if len(seen) > _MAX_COUNTED:
                    seen.popitem(last=False)
                if seen[key] <= HOT_AFTER:
                    return hook(x, **kwargs)
                del seen[key]
                fn = compiled[key] = _function(hook, key, static)
        result = None if fn is None else fn(x, *tensors)
        if result is None:  # declined in a graph: eager from now on
            compiled[key] = None
            return hook(x, **kwargs)
        return result

    call.graphs = compiled  # type: ignore[attr-defined]  # signature -> its tf.function (None: eager)

    def clear() -> None:
        """Forgets every signature's calls and graphs (for tests)."""
        with lock:
            seen.clear()
            compiled.clear()

    call.clear = clear  # type: ignore[attr-defined]
    return call


def _function(hook: Callable[..., Any], key: tuple, static: dict[str, Any]) -> Any:
    shape, dtype, _, names, specs = key
    signature = [tf.TensorSpec(shape, dtype)] + [tf.TensorSpec(s, d) for s, d in specs]

    def run(x: tf.Tensor, *tensors: tf.Tensor) -> Any:
        with eager_graph():  # the hook makes its eager choices: no exporter reads this graph
            return hook(x, **static, **dict(zip(names, tensors)))

    fn = tf.function(run, input_signature=signature, autograph=False)
    # One trace per signature by design: TensorFlow's warning about frequent retracing
    # (it counts every signature's function as one) would blame the user's code.
    if hasattr(fn, "_omit_frequent_tracing_warning"):
        fn._omit_frequent_tracing_warning = True
    return fn
