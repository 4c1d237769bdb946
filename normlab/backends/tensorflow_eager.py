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
other graphs are for exporters, which never read this one (``EuclideanNorm``
for layer norm's sums of squares, layer norm over non-trailing axes, batch
norm inference on 2-D and 5-D inputs). A signature whose graph declines
anyway stays eager.
Gradients flow through the function as through the eager ops (the hooks'
``tf.custom_gradient`` is traced with them), to the input, the parameters and
the variables they were read from.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import tensorflow as tf

from normlab.backends.tensorflow_stats import eager_graph, param

#: Eager calls of one signature before it runs as a ``tf.function``.
HOT_AFTER = 2
_MAX_SIGNATURES = 512  # counted signatures kept; beyond, calls stay eager


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def graph_when_hot(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` (a fast path: ``hook(x, **kwargs) -> result | None``), run as a
    ``tf.function`` from its :data:`HOT_AFTER`-th eager call with one signature on."""
    seen: dict[tuple, int] = {}
    compiled: dict[tuple, Callable[..., Any] | None] = {}  # None: the graph declines, stay eager

    @functools.wraps(hook)
    def call(x: Any, **kwargs: Any) -> Any:
        if not tf.executing_eagerly() or not isinstance(x, tf.Tensor):
            return hook(x, **kwargs)
        names = tuple(k for k, v in kwargs.items() if _is_tensor(v))
        tensors = [param(kwargs[k]) for k in names]  # read here: a variable's gradient is recorded
        static = {k: v for k, v in kwargs.items() if k not in names}
        key = (tuple(x.shape), x.dtype, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in static.items()),
               names, tuple((tuple(t.shape), t.dtype) for t in tensors))
        if key not in compiled:
            count = seen.get(key, 0) + 1
            if count <= HOT_AFTER or len(seen) >= _MAX_SIGNATURES:
                if count <= HOT_AFTER and len(seen) < _MAX_SIGNATURES:
                    seen[key] = count
                return hook(x, **kwargs)
            compiled[key] = _function(hook, key, static)
        fn = compiled[key]
        result = None if fn is None else fn(x, *tensors)
        if result is None:  # declined in a graph: eager from now on
            compiled[key] = None
            return hook(x, **kwargs)
        return result

    call.graphs = compiled  # type: ignore[attr-defined]  # signature -> its tf.function (None: eager)

    def clear() -> None:
        """Forgets every signature's calls and graphs."""
        seen.clear()
        compiled.clear()

    call.clear = clear  # type: ignore[attr-defined]
    return call


def _function(hook: Callable[..., Any], key: tuple, static: dict[str, Any]) -> Callable[..., Any]:
    shape, dtype, _, names, specs = key
    signature = [tf.TensorSpec(shape, dtype)] + [tf.TensorSpec(s, d) for s, d in specs]

    def run(x: tf.Tensor, *tensors: tf.Tensor) -> Any:
        with eager_graph():  # the hook makes its eager choices: no exporter reads this graph
            return hook(x, **static, **dict(zip(names, tensors)))

    return tf.function(run, input_signature=signature, autograph=False)
