"""TensorFlow fast paths: XLA- and Grappler-friendly formulations with a
closed-form backward (``tf.custom_gradient``).

The same formulation as the JAX fast paths (see ``normlab/backends/jax.py``):

* group and batch statistics are reduced per channel on a free reshape to
  ``(N, P, C)``, ``(N, C, Q)`` or ``(N, P, C, Q)`` and only then summed over
  a group's channels, instead of reducing a grouped ``(N, S, G, C/G)`` view;
* statistics are the plain one-pass moments where each slice's offset is
  within twice its spread, else taken relative to a sample of each slice (an
  element of the data, so no product feeds ``x - shift``), with a second,
  exact pass only where the sample lies more than four standard
  deviations from its slice's mean, all decided by ``tf.cond`` in the graph
  (:func:`normlab.backends.policy.stats`, shared with JAX; the bounds and why
  they are exact are there); outside XLA, a training step's inputs of at most
  :data:`~normlab.backends.tensorflow_stats.SUBSAMPLE_ELEMENTS` are instead
  taken about a subsample mean of each slice, as torch's are, deciding
  nothing (TensorFlow runs a ``tf.cond``'s branches as functions, which
  costs a small input more than the pass it saves), and so are the inputs
  of every graph outside XLA that differentiates nothing (``predict``, an
  exporter's trace: a runtime's ``IF`` quantizes to int8 wrong; layer and
  RMS norm decline there);
* the backward is the closed form
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * gamma``,
  from the saved input and per-slice statistics; where the plain moments were
  kept, without a centered copy of the input (``sum(dy * x) - mean * sum(dy)``,
  within a few roundings there since ``|mean| <= 2 std``): outside XLA each full-size operation
  is a pass over memory.

Outside XLA (eager, ``tf.function``) TensorFlow runs op by op, and every
full-size operation is a pass over memory; there the per-channel sums of a
3-D view are products with a ones vector (2x faster than its reduction over
a middle axis), and layer norm over trailing axes runs on a ``(rows, k)``
view with fewer passes (:mod:`normlab.backends.tensorflow_layer_norm`), which
also serves XLA.

Channels-last batch norm instead runs TensorFlow's fused NHWC kernel
(``FusedBatchNormV3`` and its gradient) on data centered by a sample row,
in training (inputs of at least
:data:`~normlab.backends.tensorflow_stats.FUSED_MIN_ELEMENTS`), and in
inference on ``x - mean`` (:func:`batch_norm_infer`).

It serves eager execution (from the third call with one signature on, as a
``tf.function`` of its own: :mod:`normlab.backends.tensorflow_eager`),
``tf.function`` and ``jit_compile=True`` alike, with an unknown batch size;
other unknown dimensions decline, as do non-float inputs (and, in a graph
outside XLA, for converters' sake: batch norm in inference on 2-D and 5-D
inputs, :func:`batch_norm_infer`, and layer norm over non-trailing axes,
which OpenVINO computed wrong).
float16/bfloat16 are computed in float32 and cast back.
"""

from __future__ import annotations

import math

import tensorflow as tf

from normlab.backends.tensorflow_eager import graph_when_hot
from normlab.backends.tensorflow_gradients import custom_gradient
from normlab.backends.tensorflow_layer_norm import layer_norm as _layer_norm
from normlab.backends.tensorflow_layer_norm import rms_norm as _rms_norm
from normlab.backends.tensorflow_stats import (
    UNKNOWN_BATCH,
    compute_dtype,
    cond,
    elements,
    exportable_graph,
    first_along,
    fused_serves,
    in_xla,
    normalize,
    param,
    recorded,
    stats,
    subsample_mean,
    unpack,
    usable,
    use_subsample,
)
from normlab.ops.sums import SEQUENTIAL_SUM_MAX_TERMS
from normlab.ops.sums import total as exact_sum

# --------------------------------------------------------------------------
# Channel statistics: group norm (per sample) and batch norm (per batch).
# The input is viewed as (N, P, C) for channels-last data, (N, C, Q) for
# channels-first, else (N, P, C, Q): as in the JAX fast paths, XLA reduces a
# 3-D view faster than a 4-D one with a size-1 axis. Statistics keep the
# view's rank, with N (or 1) and C.


#: Outside XLA a 3-D view of at least this many elements (an unknown batch
#: counted as :data:`~normlab.backends.tensorflow_stats.UNKNOWN_BATCH`) is
#: summed over its middle axis as a product with a ones vector: 15-20% faster
#: than TensorFlow's reduction from 2**21 elements (group norm fwd+bwd,
#: 2-core Xeon), level at 2**20; below, the matmul's fixed cost dominates
#: (GroupNorm(32) on (2, 8, 8, 64): 0.72 ms with it, 0.34 ms without).
#: Channels-first sums, over the innermost axis, are TensorFlow's reduction:
#: a matrix-vector product took group and instance norm's ``predict`` graph
#: 6-7% longer on (8, 256, 56, 56), and training steps as long.
MATMUL_SUM_MIN_ELEMENTS = 1 << 20


def _group_sum(t, c, groups):
    """Each channel's value replaced by its group's sum (``t``: (N or 1, C) with
    static size-1 axes between; static shapes only, no shape ops in the graph)."""
    if groups is None or groups == c:
        return t
    per = c // groups
    sums = tf.reduce_sum(tf.reshape(t, [-1, groups, per]), axis=2, keepdims=True)
    return tf.reshape(tf.tile(sums, [1, 1, per]), [-1, *t.shape[1:]])


def _channel_norm_fn(batch, groups, epsilon, has_gamma, has_beta, dims, ca, subsample, long_sums):
    rank = len(dims)
    c = dims[ca]
    axes = [i for i in range(0 if batch else 1, rank) if i != ca]
    per = c // groups if groups is not None else 1
    pshape = [c if i == ca else 1 for i in range(rank)]
    rest = math.prod(d for i, d in enumerate(dims) if i not in (0, ca))

    def channel_sum(t):
        """Per (sample and) channel sums, keeping the view's rank."""
        if ca == 2 and rank == 3 and not in_xla() and (long_sums or elements(t) >= MATMUL_SUM_MIN_ELEMENTS):
            # (N, P, C): ones (1, 1, P) @ t, broadcast over N (see MATMUL_SUM_MIN_ELEMENTS)
            rows = tf.reshape(t, [1, -1, c]) if batch else t
            return tf.matmul(tf.ones(tf.stack([1, 1, tf.shape(rows)[1]]), t.dtype), rows)
        return tf.reduce_sum(t, axis=axes, keepdims=True) if in_xla() else exact_sum(t, axes)

    def reduce(t):
        return _group_sum(channel_sum(t), c, groups)

    @custom_gradient
    def fn(*args):
        xv, gamma, beta, compute, xf = unpack(args, has_gamma, has_beta)
        n = tf.shape(xv)[0]
        # An empty batch (known only at run time) counts as one element: statistics 0 and 0
        # and gradients 0 (sums over nothing), not 0 / 0, as in normlab.ops.moments.
        count = tf.maximum(rest * per * tf.cast(n, compute), 1.0) if batch else float(max(rest * per, 1))

        def sample():
            if batch:
                return first_along(xf, [i for i in range(rank) if i != ca])
            index = tuple(slice(None, None, per) if i == ca else slice(None) if i == 0 else slice(0, 1)
                          for i in range(rank))
            first = tf.reshape(xf[index], [n, c // per, 1])  # the first element of each group
            first = tf.broadcast_to(first, [n, c // per, per])
            return tf.reshape(first, [n] + pshape[1:])

        shift, mean, var, rstd, ok = stats(xf, sample=sample, reduce=reduce, count=count, epsilon=epsilon,
                                           subsample_axis=(2 if ca == 1 else 1) if subsample else None,
                                           refine_axis=2 if ca == 1 else 1,
                                           terms=rest * per * ((xf.shape[0] or UNKNOWN_BATCH) if batch else 1))
        gam = None if gamma is None else tf.reshape(tf.cast(gamma, compute), pshape)
        scale = rstd if gam is None else rstd * gam
        bet = None if beta is None else tf.reshape(tf.cast(beta, compute), pshape)
        y = tf.cast(normalize(xf, ok, shift, mean, scale, bet), xv.dtype)
        outputs = (y, tf.reshape(shift + mean, [c]), tf.reshape(var, [c])) if batch else y

        def grad(*upstream):
            dy = upstream[0]
            g = tf.cast(dy, compute)
            a = channel_sum(g)

            # sum(dy * (x - mean)): where the plain moments were kept (shift 0,
            # |mean| <= 2 std) as sum(dy * x) - mean * sum(dy), with no centered
            # copy of x; otherwise about the shift, as the forward pass did.
            def b_raw():
                return channel_sum(g * xf) - mean * a

            def b_shifted():
                return channel_sum(g * ((xf - shift) - mean))

            b = cond(ok, b_raw, b_shifted)
            ga, gb = (a, b) if gam is None else (a * gam, b * gam)
            big_a = _group_sum(ga, c, groups)
            big_b = _group_sum(gb, c, groups)
            k_dy = scale
            k_xc = -(rstd * rstd * rstd) * big_b / count
            k_0 = -rstd * big_a / count
            if batch:
                dmean, dvar = upstream[1], upstream[2]
                if dvar is not None:
                    k_xc = k_xc + (2.0 / count) * tf.reshape(tf.cast(dvar, compute), pshape)
                if dmean is not None:
                    k_0 = k_0 + tf.reshape(tf.cast(dmean, compute), pshape) / count
            dx = cond(ok, lambda: g * k_dy + xf * k_xc + (k_0 - mean * k_xc),
                      lambda: g * k_dy + ((xf - shift) - mean) * k_xc + k_0)
            grads = [tf.cast(dx, xv.dtype)]
            if gamma is not None:
                grads.append(tf.cast(tf.reshape(tf.reduce_sum(b * rstd, axis=0), [c]), gamma.dtype))
            if beta is not None:
                grads.append(tf.cast(tf.reshape(tf.reduce_sum(a, axis=0), [c]), beta.dtype))
            return grads

        return outputs, grad

    return fn


def _channel_norm(x, axis, gamma, beta, batch, groups, epsilon):
    shape = x.shape
    p = math.prod(shape[1:axis])
    c = shape[axis]
    q = math.prod(shape[axis + 1:])
    if q == 1:
        dims, ca = [-1, p, c], 2
    elif p == 1:
        dims, ca = [-1, c, q], 1
    else:
        dims, ca = [-1, p, c, q], 2
    xv = tf.reshape(x, dims)
    # Sums over the middle axis of (N, P, C) add one term after another (see
    # SEQUENTIAL_SUM_MAX_TERMS): long ones take the product too, for its accuracy.
    terms = elements(x) // c if batch else p  # (an unknown batch counted as elements() counts it)
    fn = _channel_norm_fn(batch, groups, float(epsilon), gamma is not None, beta is not None,
                          dims, ca, use_subsample(x, gamma, beta), q == 1 and terms >= SEQUENTIAL_SUM_MAX_TERMS)
    args = [xv] + [t for t in (gamma, beta) if t is not None]
    return fn(*args)


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    if not usable(x):
        return None
    y = _channel_norm(x, axis, param(gamma), param(beta), False, int(groups), epsilon)
    return tf.reshape(y, tf.shape(x))


#: TensorFlow's fused NHWC batch norm kernels vectorize over channels in
#: blocks of 8 floats: measured on (32, 26, 26, C) float32 under tf.function,
#: C = 10 runs forward+backward 1.5x slower than C = 16. Other channel counts
#: use the composite path with its closed-form gradient.
CHANNEL_BLOCK = 8


def _fused_batch_norm(x, gamma, beta, epsilon):
    """Channels-last batch norm with TensorFlow's fused NHWC kernel (and its
    registered gradient), on data shifted by a subsample mean: the result does
    not depend on that shift, and the kernel then never sees an offset of more
    than four standard deviations (its variance is one-pass under XLA and with
    oneDNN: about a sample row, an outlier put outputs 1e-2 off)."""
    c = x.shape[-1]
    compute = compute_dtype(x.dtype)
    x2 = tf.cast(tf.reshape(x, [1, -1, 1, c]), compute)
    shift = tf.stop_gradient(subsample_mean(x2, 1))
    ones = tf.ones([c], compute)
    y, mean, var = tf.compat.v1.nn.fused_batch_norm(
        x2 - shift,
        ones if gamma is None else tf.cast(gamma, compute),
        tf.zeros([c], compute) if beta is None else tf.cast(beta, compute),
        epsilon=epsilon,
        is_training=True,
    )
    count = tf.cast(tf.shape(x2)[1], compute)
    var = var * ((count - 1.0) / count)  # the kernel returns the unbiased variance
    mean, var = _batch_stats_gradient(x2, tf.reshape(shift, [c]), mean, var, count)
    return tf.cast(tf.reshape(y, tf.shape(x)), x.dtype), mean, var


def _batch_stats_gradient(x2, shift, residual_mean, var, count):
    """``(shift + residual_mean, var)``, with their gradient as functions of ``x2``
    (the fused kernel's registered gradient ignores its statistics' gradients);
    it runs only where a loss uses them, never for the moving averages. The
    variance's takes ``x2 - mean`` as ``(x2 - shift) - residual_mean``: the
    mean rounds at the data's offset (5.7e-3 off float64 at 1e6).

    In the graph of a hot eager call (:mod:`normlab.backends.tensorflow_eager`)
    the function's backward receives zeros, not None, for statistics no loss
    uses: there a ``tf.cond`` skips the full-size term for all-zero ones."""
    hot_graph = not tf.executing_eagerly() and not exportable_graph()

    mean = shift + residual_mean

    @custom_gradient
    def attach(x2, mean, var):
        def grad(dmean, dvar):
            dmean = tf.zeros_like(mean) if dmean is None else dmean
            dvar = tf.zeros_like(var) if dvar is None else dvar

            def term():
                return (dmean + 2.0 * dvar * ((x2 - shift) - residual_mean)) / count

            if hot_graph:
                used = tf.reduce_any(tf.not_equal(dmean, 0.0)) | tf.reduce_any(tf.not_equal(dvar, 0.0))
                dx = tf.cond(used, term, lambda: tf.zeros_like(x2))
            else:
                dx = term()
            return dx, tf.zeros_like(mean), tf.zeros_like(var)

        return (tf.identity(mean), tf.identity(var)), grad

    return attach(x2, mean, var)


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    if not usable(x):
        return None
    gamma, beta = param(gamma), param(beta)
    count = x.shape.num_elements() // x.shape[axis] if x.shape[0] is not None else None
    if (
        axis == x.shape.rank - 1
        and x.dtype != tf.float64
        and epsilon >= 1.001e-5  # the fused kernel's smallest epsilon
        and (count is None or count >= 2)  # its variance is unbiased first
        and x.shape[-1] % CHANNEL_BLOCK == 0
        and fused_serves(x)
    ):
        return _fused_batch_norm(x, gamma, beta, epsilon)
    y, mean, var = _channel_norm(x, axis, gamma, beta, True, None, epsilon)
    return tf.reshape(y, tf.shape(x)), mean, var


# The fused kernel's own epsilon in inference, and the variance handed to it
# so that variance + epsilon == 1 (float32 rounds 1 - e + e to 1): the
# kernel then scales by exactly the scale it is given.
_KERNEL_EPSILON = 1.001e-5


def batch_norm_infer(x, *, axis, mean, variance, gamma, beta, epsilon):
    """Channels-last batch norm with given statistics: the fused NHWC kernel
    in inference mode (and its gradient, one fused pass: under XLA 2.3x
    faster forward+backward than the general path's ops, measured on
    (8, 56, 56, 256)) on ``x - mean``.

    The kernel folds its statistics into ``x * a + b``, which would round at
    the scale of the offset: it is handed ``x - mean`` and a mean of 0
    instead. ``rsqrt(variance + epsilon) * gamma`` is formed here in
    differentiable ops and handed to it as its scale (its own variance and
    epsilon sum to 1; its vectorized rsqrt of that 1 is exact on some CPUs
    and up to 2.4e-7 below it on others), so the statistics, like the parameters, get their
    gradients where a caller differentiates them (the kernel's gradient has
    none for its mean and variance).

    In a graph outside XLA (``tf.function``: what SavedModel, LiteRT and ONNX
    converters read), it serves 3-D and 4-D inputs only, which it hands to the
    kernel without a reshape or as ``(N, L, 1, C)`` (the view Conv1D's own
    output reshape undoes). There LiteRT's converter folds ``x - mean``, the
    scale and the offset into a preceding Conv1D, Conv2D or DepthwiseConv2D,
    as it does Keras' batch norm; after a Dense layer (2-D) or a Conv3D (5-D)
    the reshapes around the kernel would stay in the converted model, so
    those take the general path, whose plain ops fold as Keras' do
    (``tests/export/test_folding.py``). So does a float16 or bfloat16 3-D
    input there: OpenVINO's converter turned a float16 Dense, the casts and
    the reshaped kernel into outputs 1.3 off (``tests/export/test_mixed_precision.py``).
    Inputs below :data:`~normlab.backends.tensorflow_stats.FUSED_MIN_ELEMENTS`
    take it there too (its plain ops in an eager call's graph): the kernel's fixed
    cost dominates; not 3-D ones nothing differentiates (an exporter's trace):
    the general path does not fold through Conv1D's output reshape."""
    if not usable(x) or axis != x.shape.rank - 1 or x.dtype == tf.float64:
        return None
    c = x.shape[-1]
    if c % CHANNEL_BLOCK:
        return None
    compute = compute_dtype(x.dtype)
    exportable = x.shape.rank == 4 or (x.shape.rank == 3 and x.dtype == compute)  # see above
    graph = exportable_graph() and not in_xla()
    small = not fused_serves(x) and not tf.executing_eagerly() and not in_xla()
    if graph and (not exportable or (small and (x.shape.rank != 3 or recorded([x, mean, variance, gamma, beta])))):
        return None
    scale = tf.math.rsqrt(tf.cast(param(variance), compute) + epsilon)
    if gamma is not None:
        scale = scale * tf.cast(param(gamma), compute)
    offset = tf.zeros([c], compute) if beta is None else tf.cast(param(beta), compute)
    # x + (mean * -1) has the bits of x - mean; a converter folds an addition
    # into a preceding layer's bias, not a subtraction.
    centered = tf.cast(x, compute) + tf.cast(param(mean), compute) * -1.0
    if small:  # an eager call's graph: the plain ops, as the general path's
        return tf.cast(centered * scale + offset, x.dtype)
    centered = _nhwc_view(centered)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        centered, scale, offset, tf.zeros([c], compute), tf.fill([c], tf.constant(1.0 - _KERNEL_EPSILON, compute)),
        epsilon=_KERNEL_EPSILON, is_training=False,
    )
    if y.shape.as_list()[1:] != x.shape.as_list()[1:]:
        y = tf.reshape(y, [-1, *x.shape[1:]])
    return tf.cast(y, x.dtype)


def _nhwc_view(x):
    """``x`` (channels last, every dimension but the batch static) as the 4-D
    input the fused kernel takes: itself where it is 4-D, else ``(N, P, 1, C)``
    by a reshape to a constant shape; under XLA, whose expansion of the
    kernel's gradient runs 2.5x faster on it, always ``(1, -1, 1, C)``. No
    ``tf.shape`` enters the graph (a shape read at run time keeps a converter
    from folding the kernel into the layer before it)."""
    if in_xla():
        return tf.reshape(x, [1, -1, 1, x.shape[-1]])
    if x.shape.rank == 4:
        return x
    return tf.reshape(x, [-1, math.prod(x.shape[1:-1]), 1, x.shape[-1]])


# The hooks, each run as a tf.function from its third eager call with one signature on.
group_norm = graph_when_hot(group_norm, any_size=True)
layer_norm = graph_when_hot(_layer_norm, any_size=True)
rms_norm = graph_when_hot(_rms_norm, any_size=True)
batch_norm_train = graph_when_hot(batch_norm_train, any_size=True)
batch_norm_infer = graph_when_hot(batch_norm_infer)
