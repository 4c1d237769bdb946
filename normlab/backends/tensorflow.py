"""TensorFlow fast paths: XLA- and Grappler-friendly formulations with a
closed-form backward (``tf.custom_gradient``).

The same formulation as the JAX fast paths (see ``normlab/backends/jax.py``):

* group and batch statistics are reduced per channel on a free reshape to
  ``(N, P, C)``, ``(N, C, Q)`` or ``(N, P, C, Q)`` and only then summed over
  a group's channels, instead of reducing a grouped ``(N, S, G, C/G)`` view;
* statistics are the plain one-pass moments where each slice's offset is
  within its spread, else taken relative to a sample of each slice (an
  element of the data, so no product feeds ``x - shift``), with a second,
  exact pass only where the sample lies more than four standard
  deviations from its slice's mean;
* the backward is the closed form
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * gamma``,
  from the saved input and per-slice statistics; where the plain moments were
  kept, without a centered copy of the input (``sum(dy * x) - mean * sum(dy)``,
  exact there since ``|mean| <= std``): outside XLA each full-size operation
  is a pass over memory.

Outside XLA (eager, ``tf.function``) TensorFlow runs op by op, and every
full-size operation is a pass over memory; there the per-channel sums of a
3-D view are products with a ones vector (2x faster than its reduction over
a middle axis), and layer norm over trailing axes runs on a ``(rows, k)``
view with fewer passes (:func:`_layer_norm_rows_fn`), which also serves XLA.

Channels-last batch norm instead runs TensorFlow's fused NHWC kernel
(``FusedBatchNormV3`` and its gradient) on data centered by a sample row.

It serves eager execution, ``tf.function`` and ``jit_compile=True`` alike,
with an unknown batch size; other unknown dimensions decline, as do
non-float inputs. float16/bfloat16 are computed in float32 and cast back.
"""

from __future__ import annotations

import math

import tensorflow as tf
from keras import ops

_FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

#: See ``normlab.backends.jax``.
_MAX_RAW_RATIO = 1.0
_MAX_SHIFT_RATIO = 16.0


def _compute_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _param(param):
    if param is None:
        return None
    return tf.convert_to_tensor(ops.convert_to_tensor(param))


def _usable(x) -> bool:
    if not isinstance(x, (tf.Tensor, tf.Variable)) or x.dtype not in _FLOATS:
        return False
    shape = x.shape
    if shape.rank is None or shape.rank < 2:
        return False
    if any(d is None for d in shape[1:]):
        return False
    return shape[0] is None or shape.num_elements() > 0


def _unpack(args, has_gamma, has_beta):
    """``(x, gamma, beta, compute dtype, x in it)`` from a custom-gradient
    function's positional arguments (``gamma``/``beta`` passed only if present)."""
    x = args[0]
    gamma = args[1] if has_gamma else None
    beta = args[1 + has_gamma] if has_beta else None
    compute = _compute_dtype(x.dtype)
    return x, gamma, beta, compute, tf.cast(x, compute)


def _in_xla() -> bool:
    """Whether the ops being built will be compiled by XLA (``jit_compile=True``)."""
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a private module: assume XLA (the portable formulation)
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _shifted_stats(xf, shift, reduce, count, epsilon, sums=None):
    """Mean relative to ``shift``, variance and rstd (see the module doc)."""
    sums = sums or (lambda t: (reduce(t), reduce(t * t)))
    d = xf - shift
    total, squares = sums(d)
    mean = total / count
    var = tf.maximum(squares / count - mean * mean, 0.0)
    far = tf.reduce_any(mean * mean > _MAX_SHIFT_RATIO * (var + epsilon))

    def two_pass():  # recomputes d: a branch's captured operands are materialized
        r = (xf - shift) - mean
        return reduce(r * r) / count

    var = tf.cond(far, two_pass, lambda: var)
    return mean, var


def _stats(xf, sample, reduce, count, epsilon, sums=None):
    """``(shift, mean, var, rstd)``: plain one-pass moments where each
    slice's offset is within its spread, else statistics relative to a
    sample of each slice (see ``normlab.backends.jax._stats``).
    ``sums(t)`` gives ``(reduce(t), reduce(t * t))`` unless given."""
    sums = sums or (lambda t: (reduce(t), reduce(t * t)))
    total, squares = sums(xf)
    mean0 = total / count
    var0 = tf.maximum(squares / count - mean0 * mean0, 0.0)
    ok = tf.reduce_all(mean0 * mean0 <= _MAX_RAW_RATIO * (var0 + epsilon)) & tf.reduce_all(
        tf.math.is_finite(var0)
    )

    def raw():
        return tf.zeros_like(mean0), mean0, var0

    def shifted():
        shift = tf.stop_gradient(sample())
        mean, var = _shifted_stats(xf, shift, reduce, count, epsilon, sums)
        return shift, mean, var

    shift, mean, var = tf.cond(ok, raw, shifted)
    return shift, mean, var, tf.math.rsqrt(var + epsilon), ok


def _apply(xf, ok, shift, mean, scale, beta):
    """``(x - shift - mean) * scale + beta`` in two full-size operations
    (each one a pass over memory outside XLA): ``x * scale + offset`` where
    the plain moments were kept (``|mean| <= std``: Keras' own form, exact
    there), ``(x - shift) * scale + offset`` otherwise."""
    offset = -mean * scale if beta is None else beta - mean * scale
    return tf.cond(ok, lambda: xf * scale + offset, lambda: (xf - shift) * scale + offset)


# --------------------------------------------------------------------------
# Channel statistics: group norm (per sample) and batch norm (per batch).
# The input is viewed as (N, P, C) for channels-last data, (N, C, Q) for
# channels-first, else (N, P, C, Q): as in the JAX fast paths, XLA reduces a
# 3-D view faster than a 4-D one with a size-1 axis. Statistics keep the
# view's rank, with N (or 1) and C.


def _group_sum(t, c, groups):
    if groups is None or groups == c:
        return t
    per = c // groups
    n = tf.shape(t)[0]
    shape = tf.shape(t)
    t = tf.reduce_sum(tf.reshape(t, [n, groups, per]), axis=2, keepdims=True)
    return tf.reshape(tf.broadcast_to(t, [n, groups, per]), shape)


def _channel_norm_fn(batch, groups, epsilon, has_gamma, has_beta, dims, ca):
    rank = len(dims)
    c = dims[ca]
    axes = [i for i in range(0 if batch else 1, rank) if i != ca]
    per = c // groups if groups is not None else 1
    pshape = [c if i == ca else 1 for i in range(rank)]
    rest = math.prod(d for i, d in enumerate(dims) if i not in (0, ca))

    def channel_sum(t):
        """Per (sample and) channel sums, keeping the view's rank."""
        if rank == 3 and not _in_xla():
            # Outside XLA a product with a ones vector sums a 3-D view 2x
            # faster than TensorFlow's reduction over its middle axis.
            if ca == 2:  # (N, P, C): ones (1, 1, P) @ t, broadcast over N
                rows = tf.reshape(t, [1, -1, c]) if batch else t
                ones = tf.ones(tf.stack([1, 1, tf.shape(rows)[1]]), t.dtype)
                return tf.matmul(ones, rows)
            total = tf.linalg.matvec(t, tf.ones([dims[2]], t.dtype))[..., None]  # (N, C, Q)
            return tf.reduce_sum(total, axis=0, keepdims=True) if batch else total
        return tf.reduce_sum(t, axis=axes, keepdims=True)

    def reduce(t):
        return _group_sum(channel_sum(t), c, groups)

    @tf.custom_gradient
    def fn(*args):
        xv, gamma, beta, compute, xf = _unpack(args, has_gamma, has_beta)
        n = tf.shape(xv)[0]
        count = rest * per * (tf.cast(n, compute) if batch else 1.0)

        def sample():
            if batch:
                return xf[tuple(slice(None) if i == ca else slice(0, 1) for i in range(rank))]
            index = tuple(slice(None, None, per) if i == ca else slice(None) if i == 0 else slice(0, 1)
                          for i in range(rank))
            first = tf.reshape(xf[index], [n, c // per, 1])  # the first element of each group
            first = tf.broadcast_to(first, [n, c // per, per])
            return tf.reshape(first, [n] + pshape[1:])

        shift, mean, var, rstd, ok = _stats(xf, sample, reduce, count, epsilon)
        gam = None if gamma is None else tf.reshape(tf.cast(gamma, compute), pshape)
        scale = rstd if gam is None else rstd * gam
        bet = None if beta is None else tf.reshape(tf.cast(beta, compute), pshape)
        y = tf.cast(_apply(xf, ok, shift, mean, scale, bet), xv.dtype)
        outputs = (y, tf.reshape(shift + mean, [c]), tf.reshape(var, [c])) if batch else y

        def grad(*upstream):
            dy = upstream[0]
            g = tf.cast(dy, compute)
            a = channel_sum(g)

            # sum(dy * (x - mean)): where the plain moments were kept (shift 0,
            # |mean| <= std) as sum(dy * x) - mean * sum(dy), with no centered
            # copy of x; otherwise about the shift, as the forward pass did.
            def b_raw():
                return channel_sum(g * xf) - mean * a

            def b_shifted():
                return channel_sum(g * ((xf - shift) - mean))

            b = tf.cond(ok, b_raw, b_shifted)
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
            dx = tf.cond(ok, lambda: g * k_dy + xf * k_xc + (k_0 - mean * k_xc),
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
    fn = _channel_norm_fn(batch, groups, float(epsilon), gamma is not None, beta is not None,
                          dims, ca)
    args = [xv] + [t for t in (gamma, beta) if t is not None]
    return fn(*args)


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    y = _channel_norm(x, axis, _param(gamma), _param(beta), False, int(groups), epsilon)
    return tf.reshape(y, tf.shape(x))


#: TensorFlow's fused NHWC batch norm kernels vectorize over channels in
#: blocks of 8 floats: measured on (32, 26, 26, C) float32 under tf.function,
#: C = 10 runs forward+backward 1.5x slower than C = 16. Other channel counts
#: use the composite path with its closed-form gradient.
CHANNEL_BLOCK = 8


def _fused_batch_norm(x, gamma, beta, epsilon):
    """Channels-last batch norm with TensorFlow's fused NHWC kernel (and its
    registered gradient), on data centered by a sample row: the result does
    not depend on that shift, and the kernel then never sees an offset."""
    c = x.shape[-1]
    compute = _compute_dtype(x.dtype)
    x2 = tf.cast(tf.reshape(x, [1, -1, 1, c]), compute)
    shift = tf.stop_gradient(x2[:, :1])
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
    return tf.cast(tf.reshape(y, tf.shape(x)), x.dtype), tf.reshape(shift, [c]) + mean, var


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    gamma, beta = _param(gamma), _param(beta)
    count = x.shape.num_elements() // x.shape[axis] if x.shape[0] is not None else None
    if (
        axis == x.shape.rank - 1
        and x.dtype != tf.float64
        and epsilon >= 1.001e-5  # the fused kernel's smallest epsilon
        and (count is None or count >= 2)  # its variance is unbiased first
        and x.shape[-1] % CHANNEL_BLOCK == 0
    ):
        return _fused_batch_norm(x, gamma, beta, epsilon)
    y, mean, var = _channel_norm(x, axis, gamma, beta, True, None, epsilon)
    return tf.reshape(y, tf.shape(x)), mean, var


# --------------------------------------------------------------------------
# Layer norm: statistics over arbitrary feature axes, elementwise affine.


def _layer_norm_fn(axes, epsilon, has_gamma, has_beta, shape):
    ndim = len(shape)
    pshape = [shape[i] if i in axes else 1 for i in range(ndim)]
    others = [i for i in range(ndim) if i not in axes]
    count = float(math.prod(shape[a] for a in axes))
    sample = tuple(slice(0, 1) if i in axes else slice(None) for i in range(ndim))

    def reduce(t):
        return tf.reduce_sum(t, axis=list(axes), keepdims=True)

    @tf.custom_gradient
    def fn(*args):
        x, gamma, beta, compute, xf = _unpack(args, has_gamma, has_beta)
        shift, mean, _, rstd, ok = _stats(xf, lambda: xf[sample], reduce, count, epsilon)
        gam = None if gamma is None else tf.reshape(tf.cast(gamma, compute), pshape)
        scale = rstd if gam is None else rstd * gam
        bet = None if beta is None else tf.reshape(tf.cast(beta, compute), pshape)
        y = _apply(xf, ok, shift, mean, scale, bet)

        def grad(dy):
            g = tf.cast(dy, compute)
            xc = (xf - shift) - mean
            gg = g if gam is None else g * gam
            big_a = reduce(gg)
            big_b = reduce(gg * xc)
            dx = gg * rstd - (rstd * big_a + xc * (rstd * rstd * rstd) * big_b) / count
            grads = [tf.cast(dx, x.dtype)]
            if gamma is not None:
                dgamma = tf.reduce_sum(g * xc * rstd, axis=others)
                grads.append(tf.cast(tf.reshape(dgamma, tf.shape(gamma)), gamma.dtype))
            if beta is not None:
                dbeta = tf.reduce_sum(g, axis=others)
                grads.append(tf.cast(tf.reshape(dbeta, tf.shape(beta)), beta.dtype))
            return grads

        return tf.cast(y, x.dtype), grad

    return fn


def _affine_columns(t, gamma, beta):
    """``t * gamma + beta`` per column of a 2-D ``t``, in one pass: the
    inference form of TensorFlow's fused batch-norm kernel (mean 0,
    variance 1, epsilon 0) on ``t`` viewed as ``(rows, 1, 1, columns)``.
    Separate multiply and add kernels would each be a pass over memory."""
    k = t.shape[-1]
    ones, zeros = tf.ones([k], t.dtype), tf.zeros([k], t.dtype)
    y = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(t, [-1, 1, 1, k]), scale=ones if gamma is None else gamma,
        offset=zeros if beta is None else beta, mean=zeros, variance=ones, epsilon=0.0,
        is_training=False)[0]
    return tf.reshape(y, tf.shape(t))


def _layer_norm_rows_fn(epsilon, has_gamma, has_beta, k, xla):
    """Layer norm of the rows of a 2-D ``(rows, k)`` view.

    Outside XLA (eager, ``tf.function``) TensorFlow runs op by op and every
    full-size operation is a pass over memory: six of them here, forward
    and backward, instead of twenty. Under XLA, its CPU reduction of a
    fused ``x * x`` runs at a quarter of the speed of a plain ``sum(x)``,
    but a matrix-vector product with the same producer at full speed.

    * ``sum(x)`` and ``sum(x^2)`` per row: outside XLA a reduction and
      ``EuclideanNorm(x)^2`` (no squared copy of ``x``); under XLA one
      product ``stack([x, x * x]) @ ones``, which reads ``x`` once.
    * The apply step is ``x * rstd - mean * rstd`` per row, then ``gamma``
      and ``beta`` per column, outside XLA in one fused-kernel pass
      (:func:`_affine_columns`).
    * The backward forms ``dy * x`` once, and every row and column sum it
      needs (``sum(dy * gamma)``, ``sum(dy * x * gamma)`` per row;
      ``dgamma``, ``dbeta`` per column) as a matrix-vector product or a
      reduction of ``dy`` or ``dy * x``; ``dx`` is then
      ``(dy * gamma) * rstd + x * k_x + k_0``.

    Where the plain moments are not kept (an offset beyond the spread) the
    same steps run on ``x - shift``, and the backward on the centered
    ``x - shift - mean``, as in the general formulation.
    """

    def reduce(t):
        return tf.reduce_sum(t, axis=1, keepdims=True)

    def sums(t):
        if xla:  # XLA has no EuclideanNorm
            both = tf.linalg.matvec(tf.stack([t, t * t], axis=1), tf.ones([k], t.dtype))
            return both[:, :1], both[:, 1:]
        return reduce(t), tf.square(tf.math.reduce_euclidean_norm(t, axis=1, keepdims=True))

    @tf.custom_gradient
    def fn(*args):
        x, gamma, beta, compute, xf = _unpack(args, has_gamma, has_beta)
        shift, mean, _, rstd, ok = _stats(xf, lambda: xf[:, :1], reduce, float(k), epsilon, sums)
        gam = None if gamma is None else tf.cast(gamma, compute)
        bet = None if beta is None else tf.cast(beta, compute)
        offset = -mean * rstd
        t = tf.cond(ok, lambda: xf * rstd + offset, lambda: (xf - shift) * rstd + offset)
        if gam is None and bet is None:
            y = t
        elif compute == tf.float32 and not xla:
            y = _affine_columns(t, gam, bet)
        else:  # the fused kernel has no float64
            y = t if gam is None else t * gam
            y = y if bet is None else y + bet

        def grad(dy):
            g = tf.cast(dy, compute)
            r, m = tf.reshape(rstd, [-1]), tf.reshape(mean, [-1])

            def terms(xr, mr):
                # xr: x, or x centered as the forward pass did; mr its mean
                # (0 once centered). sum(g * gamma * (x - mean)) per row is
                # sum(g * gamma * xr) - mr * sum(g * gamma).
                gx = g * xr
                rows = (lambda t: tf.linalg.matvec(t, gam)) if gam is not None else (
                    lambda t: tf.reduce_sum(t, axis=1))
                big_a = rows(g)
                big_b = rows(gx) - mr * big_a
                dgamma = tf.linalg.matvec(gx, r, transpose_a=True) - tf.linalg.matvec(
                    g, mr * r, transpose_a=True)
                k_x = -(r * r * r) * big_b / k
                k_0 = -r * big_a / k - k_x * mr
                gg = g if gam is None else g * gam
                dx = gg * r[:, None] + (xr * k_x[:, None] + k_0[:, None])
                return dx, dgamma

            dx, dgamma = tf.cond(ok, lambda: terms(xf, m),
                                 lambda: terms((xf - shift) - mean, tf.zeros_like(m)))
            grads = [tf.cast(dx, x.dtype)]
            if gamma is not None:
                grads.append(tf.cast(dgamma, gamma.dtype))
            if beta is not None:
                grads.append(tf.cast(tf.reduce_sum(g, axis=0), beta.dtype))
            return grads

        return tf.cast(y, x.dtype), grad

    return fn


def layer_norm(x, *, axes, gamma, beta, epsilon):
    if not _usable(x):
        return None
    gamma, beta = _param(gamma), _param(beta)
    axes = tuple(int(a) for a in axes)
    args = [t for t in (gamma, beta) if t is not None]
    k = len(axes)
    if axes == tuple(range(x.shape.rank - k, x.shape.rank)):
        width = math.prod(x.shape[x.shape.rank - k:])
        fn = _layer_norm_rows_fn(float(epsilon), gamma is not None, beta is not None, width, _in_xla())
        flat = [tf.reshape(t, [width]) for t in args]
        return tf.reshape(fn(tf.reshape(x, [-1, width]), *flat), tf.shape(x))
    fn = _layer_norm_fn(axes, float(epsilon), gamma is not None, beta is not None, tuple(x.shape))
    return fn(*([x] + args))
