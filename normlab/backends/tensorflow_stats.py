"""The TensorFlow fast paths' shared pieces: which inputs they serve, the
statistics of :func:`normlab.backends.policy.stats` on TensorFlow, and the
apply step (see :mod:`normlab.backends.tensorflow`)."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
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
    # Empty inputs (an empty non-batch axis, whatever the batch) go the general way.
    return 0 not in shape[1:] and shape[0] != 0


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


#: A training step's inputs of at most this many elements are taken about a
#: subsample mean outside XLA, deciding nothing (:func:`use_subsample`).
#: There TensorFlow runs a ``tf.cond``'s branches as functions: in a training
#: step of the classic CNN (batch 32, ``(32, 26, 26, 10)``) the five conds of a
#: batch or group norm, forward and backward, cost 0.3-0.5 ms more than the
#: pass over memory they save, and from one process to the next the step ran
#: up to 1.3x slower; at ``2**20`` elements (batch 256) the two were even on
#: average, and above it the conditional statistics, which skip that pass, are
#: faster (1.1x at ``(8, 56, 56, 256)``). Under XLA the conds compile into the
#: program. Graphs outside XLA that differentiate nothing (``predict``, every
#: exporter's trace) take the subsample shift at every size: full-integer
#: LiteRT quantization calibrates a ``tf.cond``'s branches only where the
#: float model ran them, and at an offset the quantized model took the other
#: (group norm 200% off at an offset of 1000, Keras' layer 17.4%; about the
#: subsample mean 18.2%). It costs the float graph a pass: group norm's
#: ``predict`` graph took 11.7 against 7.1 ms at ``(8, 56, 56, 256)``, one
#: thread (Keras' layer 32.1). Layer and RMS norm decline there (the
#: subsample shift quantizes their rows 33% off, Keras' 16%).
SUBSAMPLE_ELEMENTS = 1 << 20

#: Smaller inputs (an unknown batch counted as :data:`UNKNOWN_BATCH`) skip
#: TensorFlow's fused batch-norm kernel, whose fixed cost dominates there: batch
#: norm in training takes the composite path (tf.function, forward+backward,
#: (16, 8, 8, 64): 0.81 ms fused, 0.46 ms composite, 0.53 ms Keras; (32, 8, 8,
#: 64): 1.20 ms fused, 1.43 ms composite), and layer norm applies its
#: parameters by a product and a sum ((2, 8, 8, 64): 0.39 ms, 0.28 ms without it).
FUSED_MIN_ELEMENTS = 1 << 17

#: Under XLA, slices of at least this many terms take their statistics in a
#: second pass over the residuals (:func:`stats`; see
#: :mod:`normlab.backends.policy`): XLA's CPU sums over axes that are not
#: innermost err 1.2e-5 to 4.7e-5 at 4096 terms with the one-pass cancellation
#: (outputs up to 5, an outlier first element), within 2.2e-6 at 1568; the
#: second pass cost group norm forward+backward 15-35% there.
CENTERED_MIN_TERMS = 1 << 11

#: Outside XLA, sums of thousands of terms err by about 1e-6 relative, not
#: one rounding, and one-pass moments about a sample ``r`` variances from the
#: mean multiply that by ``1 + r`` (up to 17): instance norm on ``1e4 +
#: N(0, 1)`` (4, 64, 64, 64) was 1.1e-5 off float64 eagerly, 2.3e-5 with
#: each channel's first value 3 standard deviations out, and a sample's
#: output moved by 1.6e-5 with the batch (a far sample in another slice sent
#: every slice to the exact pass). Where the plain moments are not kept, the
#: statistics are taken about the subsample mean instead (``r`` near
#: ``16 / P``), at the cost of a pass over a sixteenth of the input. Under
#: XLA they are taken about the plain moments' mean, as JAX's
#: (:func:`_refine_xla`): one NaN or far sample in a batch moved the others'
#: instance-norm outputs on (8, 32, 32, 64) by up to 1.4e-5 about each
#: slice's first value, by 9.5e-7 now (float64: 6.6e-7 to 1.0e-6 off either way).
REFINED_SHIFT = "subsample mean outside XLA, plain mean under XLA"

#: An unknown (``None``) batch size counts as Keras' default ``batch_size``:
#: ``fit`` traces its step with one.
UNKNOWN_BATCH = 32


def elements(x) -> int:
    """The elements of ``x``, an unknown batch size counted as :data:`UNKNOWN_BATCH`."""
    shape = x.shape
    return math.prod(shape[1:]) * (UNKNOWN_BATCH if shape[0] is None else shape[0])


def fused_serves(x) -> bool:
    """Whether ``x`` is large enough for the fused kernel (:data:`FUSED_MIN_ELEMENTS`)."""
    return elements(x) >= FUSED_MIN_ELEMENTS


def tape_order(tensors) -> int | None:
    """The highest gradient order a tape may take through ``tensors`` (0: none
    records them, 1: first order, 2: higher), or None where TensorFlow no
    longer tells (a private API). A variable counts as its read."""
    try:
        from tensorflow.python.ops.gradients_util import PossibleTapeGradientTypes
    except ImportError:
        return None
    return PossibleTapeGradientTypes([tf.convert_to_tensor(t) for t in tensors if t is not None])  # a Python int


def recorded(tensors) -> bool:
    """Whether a gradient tape records any of ``tensors`` (a training step);
    False where TensorFlow no longer tells."""
    return (tape_order(tensors) or 0) > 0


def inference_graph(x, *params) -> bool:
    """Whether ops are being built into a graph outside XLA that differentiates
    nothing (``predict``, an exporter's trace): no tape records ``x`` or
    ``params``, and no eager call's graph (:func:`exportable_graph`)."""
    return exportable_graph() and not in_xla() and not recorded([x, *params])


def use_subsample(x, *params) -> bool:
    """Whether a hook takes its statistics about a subsample mean, deciding
    nothing: outside XLA, in a training step for at most
    :data:`SUBSAMPLE_ELEMENTS` (where a tape records ``x`` or the parameters),
    and in every graph that differentiates nothing (:data:`SUBSAMPLE_ELEMENTS`
    says why). Decided before the hook's ``tf.custom_gradient``, inside which
    no tape records."""
    if in_xla() or 0 in x.shape[1:]:
        return False
    if recorded([x, *params]):
        return elements(x) <= SUBSAMPLE_ELEMENTS
    return exportable_graph()


def stats(xf, *, sample, reduce, count, epsilon, subsample_axis=None, sums=None, terms=None,
          refine_axis=None) -> policy.Stats:
    """:func:`normlab.backends.policy.stats`: the plain moments where every
    slice's offset is within twice its spread, else moments about a sample of
    each slice, decided by ``tf.cond``; given ``subsample_axis`` (one of the
    reduced axes; see :func:`use_subsample`), moments about each slice's
    subsample mean along it, deciding nothing. Under XLA slices of
    :data:`CENTERED_MIN_TERMS` or more (``terms``, by default ``count``)
    take a second pass over the residuals (see :mod:`normlab.backends.policy`).
    ``sums(t)`` gives ``(reduce(t), reduce(t * t))`` unless given. The
    conditional statistics' shifted moments are taken about the subsample
    mean along ``refine_axis`` outside XLA, about the plain moments' mean
    under XLA (see :data:`REFINED_SHIFT`)."""
    sums = sums or (lambda t: (reduce(t), reduce(t * t)))

    def subsample_along(axis):
        def subsample(anchor):  # about the slice's sample: a constant slice's shift is its value exactly
            size = xf.shape[axis]
            return anchor + reduce(every_stride(xf, axis) - anchor) / (count * (stride_count(xf, axis) / size))
        return subsample

    xla = in_xla()
    if xla:
        refine = _refine_xla
    elif refine_axis is not None:
        def refine(anchor, _):
            return subsample_along(refine_axis)(anchor)
    else:
        refine = None
    return policy.stats(xf, sample=sample, sums=sums, reduce=reduce, count=count, epsilon=epsilon, xp=_XP,
                        subsample=None if subsample_axis is None else subsample_along(subsample_axis),
                        centered=xla and (terms or count) >= CENTERED_MIN_TERMS, refine=refine)


def _refine_xla(anchor, mean):
    """Under XLA, the shift JAX takes (:data:`normlab.backends.jax.REFINED_SHIFT`):
    the plain moments' ``mean``, computed once outside the ``tf.cond`` (its
    operand, so every fusion reads the same bits), or the sample ``anchor``
    where it is within :data:`~normlab.backends.policy.ANCHOR_EPS` epsilons of
    that mean (a constant slice's value, exactly) or the mean is not finite."""
    tolerance = policy.ANCHOR_EPS * float(np.finfo(mean.dtype.as_numpy_dtype).eps)
    near = tf.abs(mean - anchor) <= tolerance * tf.abs(mean)
    return tf.where(near | ~tf.math.is_finite(mean), anchor, mean)


def cond(raw, plain, shifted):
    """:func:`normlab.backends.policy.select`: ``tf.cond``, or ``shifted()`` alone after two passes."""
    return policy.select(raw, plain, shifted, _XP)



#: The subsample shifts take every ``STRIDE``-th value along their axis:
#: :func:`~normlab.backends.policy.subsample_size` of them, spread over the
#: slice. The first ones instead (a band of an image's top rows, the first
#: samples of a batch) put group and instance norm's outputs (up to 5) 7.5e-6
#: to 1.0e-5 off float64 where those rows were brighter than the rest by 10
#: standard deviations (``(1, 64, 64, 8)``, ``(4, 56, 56, 256)``; every 16th:
#: 5.9e-7 and 1.4e-6).
STRIDE = int(policy.MAX_SHIFT_RATIO)

#: Along the innermost axis (channels-first data's positions), the subsample
#: takes every :data:`STRIDE`-th run of ``RUN`` neighbouring values, not single
#: values, where ``RUN`` divides the axis into at least ``8 * STRIDE`` runs:
#: TensorFlow's CPU gather of single values from the innermost axis took
#: 2.7 ms on ``(8, 256, 3136)``, of runs of 16 0.9 ms (as along a middle axis).
#: Any subset of at least ``size / STRIDE`` values bounds the offset ratio.
RUN = 16


def _run(t, axis: int) -> int:
    """The values :func:`every_stride` takes together along ``axis``: :data:`RUN` or 1."""
    size = t.shape[axis]
    innermost = axis % t.shape.rank == t.shape.rank - 1
    return RUN if innermost and size is not None and size % RUN == 0 and size >= 8 * STRIDE * RUN else 1


def stride_count(t, axis: int) -> int:
    """How many values :func:`every_stride` takes along ``axis`` (of a static size):
    at least :func:`~normlab.backends.policy.subsample_size` of them."""
    run = _run(t, axis)
    return policy.subsample_size(t.shape[axis] // run) * run


def every_stride(t, axis: int):
    """Every :data:`STRIDE`-th slice of ``t`` along ``axis`` (along the innermost
    axis, every :data:`STRIDE`-th run of :data:`RUN`), by a gather (a strided
    slice along a middle axis cost TensorFlow's CPU kernel 3.5 ms more on
    ``(8, 3136, 256)``, a third of group norm's ``predict`` graph)."""
    size = t.shape[axis]
    run = _run(t, axis)
    if run > 1:
        runs = tf.reshape(t, [-1, *t.shape[1:-1], size // run, run])
        taken = tf.gather(runs, tf.range(0, size // run, STRIDE), axis=-2)
        return tf.reshape(taken, [-1, *t.shape[1:-1], stride_count(t, axis)])
    return tf.gather(t, tf.range(0, tf.shape(t)[axis] if size is None else size, STRIDE), axis=axis)


def subsample_mean(t, axis: int):
    """The mean of every :data:`STRIDE`-th value of ``t`` along ``axis``
    (kept), of an unknown size too: a shift whose offset ratio is within
    :data:`~normlab.backends.policy.MAX_SHIFT_RATIO`. It is the output of one
    reduction, with no operation after it that a fusion could recompute (and
    round otherwise) beside its consumers."""
    size = t.shape[axis]
    if size is None:
        k = (tf.shape(t)[axis] + STRIDE - 1) // STRIDE
        weight = 1.0 / tf.cast(tf.maximum(k, 1), t.dtype)
    else:
        weight = 1.0 / max(stride_count(t, axis), 1)
    return tf.reduce_sum(every_stride(t, axis) * weight, axis=axis, keepdims=True)


def first_along(t, axes):
    """:func:`normlab.ops.samples.first_along` in TensorFlow: the first element
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
    return cond(ok, lambda: xf * scale + offset, lambda: (xf - shift) * scale + offset)
