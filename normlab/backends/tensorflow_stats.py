"""The TensorFlow fast paths' shared pieces: which inputs they serve, the
statistics of :func:`normlab.backends.policy.stats` on TensorFlow, and the
apply step (see :mod:`normlab.backends.tensorflow`)."""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf
from keras import ops

from normlab.backends import policy, thread_setting

FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def compute_dtype(dtype):
    """float64 stays float64; everything else is computed in float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def param(value):
    """A hook's ``gamma``/``beta`` (a Keras variable, tensor or None) as a tensor."""
    if value is None:
        return None
    return tf.convert_to_tensor(ops.convert_to_tensor(value))


def usable(x) -> bool:
    if not isinstance(x, (tf.Tensor, tf.Variable)) or x.dtype not in FLOATS:
        return False
    shape = x.shape
    if shape.rank is None or shape.rank < 2:
        return False
    if any(d is None for d in shape[1:]):
        return False
    return shape[0] is None or shape.num_elements() > 0


def unpack(args, has_gamma, has_beta):
    """``(x, gamma, beta, compute dtype, x in it)`` from a custom-gradient
    function's positional arguments (``gamma``/``beta`` passed only if present)."""
    x = args[0]
    gamma = args[1] if has_gamma else None
    beta = args[1 + has_gamma] if has_beta else None
    compute = compute_dtype(x.dtype)
    return x, gamma, beta, compute, tf.cast(x, compute)


_local = threading.local()


def exportable_graph() -> bool:
    """Whether ops are being built into a graph an exporter may read: any graph but
    the ones :mod:`normlab.backends.tensorflow_eager` builds to run eager calls."""
    return not tf.executing_eagerly() and not getattr(_local, "eager_graph", False)


def eager_graph() -> contextlib.AbstractContextManager[None]:
    """Marks the graph traced inside the block as an eager call's, never exported."""
    return thread_setting(_local, "eager_graph", True, False)


def in_xla() -> bool:
    """Whether the ops being built will be compiled by XLA (``jit_compile=True``)."""
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a private module: assume XLA (the portable formulation)
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


#: The array primitives of :func:`normlab.backends.policy.stats`.
_XP = policy.ArrayOps(
    maximum=tf.maximum, all=tf.reduce_all, any=tf.reduce_any, isfinite=tf.math.is_finite, cond=tf.cond,
    stop_gradient=tf.stop_gradient, zeros_like=tf.zeros_like, rsqrt=tf.math.rsqrt,
)


def stats(xf, *, sample, reduce, count, epsilon, sums=None) -> policy.Stats:
    """:func:`normlab.backends.policy.stats` (the plain moments where every
    slice's offset is within twice its spread, else moments about a sample of each
    slice, decided by ``tf.cond``); ``sums(t)`` gives
    ``(reduce(t), reduce(t * t))`` unless given."""
    sums = sums or (lambda t: (reduce(t), reduce(t * t)))
    return policy.stats(xf, sample=sample, sums=sums, reduce=reduce, count=count, epsilon=epsilon, xp=_XP)


def first_along(t, axes):
    """:func:`normlab.ops.axes.first_along` in TensorFlow: the first element
    along ``axes``, 0 along one whose unknown (batch) size is 0 at run time."""
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(t.shape.rank))
    unknown = [a for a in axes if t.shape[a] is None]
    if not unknown:
        return t[index]
    return tf.pad(t[index], [[0, 1] if a in unknown else [0, 0] for a in range(t.shape.rank)])[index]


def normalize(xf, ok, shift, mean, scale, beta):
    """``(x - shift - mean) * scale + beta`` in two full-size operations
    (each one a pass over memory outside XLA): ``x * scale + offset`` where
    the plain moments were kept (``|mean| <= 2 std``: Keras' own form, within
    a few roundings there), ``(x - shift) * scale + offset`` otherwise."""
    offset = -mean * scale if beta is None else beta - mean * scale
    return tf.cond(ok, lambda: xf * scale + offset, lambda: (xf - shift) * scale + offset)
