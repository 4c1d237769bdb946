"""TensorFlow fast paths for layer norm (statistics over arbitrary feature
axes with an elementwise affine, and a ``(rows, k)`` formulation for
trailing axes; see :mod:`normlab.backends.tensorflow`) and for RMS norm
over trailing axes (the same rows, uncentered)."""

from __future__ import annotations

import math

import tensorflow as tf

from normlab.backends.tensorflow_gradients import custom_gradient
from normlab.backends.tensorflow_stats import (
    cond,
    exportable_graph,
    fused_serves,
    in_xla,
    inference_graph,
    normalize,
    param,
    stats,
    unpack,
    usable,
    use_subsample,
)
from normlab.ops.sums import total as exact_sum


def _layer_norm_fn(axes, epsilon, has_gamma, has_beta, shape, subsample):
    ndim = len(shape)
    pshape = [shape[i] if i in axes else 1 for i in range(ndim)]
    others = [i for i in range(ndim) if i not in axes]
    count = float(math.prod(shape[a] for a in axes))
    sample = tuple(slice(0, 1) if i in axes else slice(None) for i in range(ndim))

    def reduce(t):
        return exact_sum(t, list(axes))  # (TensorFlow's sums over other than innermost axes are sequential)

    @custom_gradient
    def fn(*args):
        x, gamma, beta, compute, xf = unpack(args, has_gamma, has_beta)
        shift, mean, _, rstd, ok = stats(xf, sample=lambda: xf[sample], reduce=reduce, count=count,
                                          epsilon=epsilon, subsample_axis=axes[0] if subsample else None,
                                          refine_axis=axes[0])
        gam = None if gamma is None else tf.reshape(tf.cast(gamma, compute), pshape)
        scale = rstd if gam is None else rstd * gam
        bet = None if beta is None else tf.reshape(tf.cast(beta, compute), pshape)
        y = normalize(xf, ok, shift, mean, scale, bet)

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


def _row_sums(t, k, xla, centered):
    """``(sum(t), sum(t * t))`` per row of a 2-D ``(rows, k)`` ``t``, each
    ``(rows, 1)`` (``sum(t)`` None where not ``centered``).

    * Eagerly, or in the graph of a hot eager call: a reduction and
      ``EuclideanNorm(t)^2`` (no squared copy of ``t``; first-order only:
      EuclideanNorm's second derivative is NaN in a graph).
    * In a graph that may be exported: ``sum(t * t)``. EuclideanNorm is
      neither a TFLite builtin nor known to tf2onnx, and no exporter marks
      its traces.
    * Under XLA (no EuclideanNorm; its CPU reduction of a fused ``t * t``
      is slow): a matrix-vector product with ones, of ``stack([t, t * t])``
      (one read of ``t``) or of ``t * t``.
    """
    if xla:
        ones = tf.ones([k], t.dtype)
        if not centered:
            return None, tf.linalg.matvec(t * t, ones)[:, None]
        both = tf.linalg.matvec(tf.stack([t, t * t], axis=1), ones)
        return both[:, :1], both[:, 1:]
    total = tf.reduce_sum(t, axis=1, keepdims=True) if centered else None
    if not exportable_graph():
        return total, tf.square(tf.math.reduce_euclidean_norm(t, axis=1, keepdims=True))
    return total, tf.reduce_sum(t * t, axis=1, keepdims=True)


def _layer_norm_rows_fn(epsilon, has_gamma, has_beta, k, xla, subsample, fused):
    """Layer norm of the rows of a 2-D ``(rows, k)`` view.

    Outside XLA (eager, ``tf.function``) TensorFlow runs op by op and every
    full-size operation is a pass over memory: six of them here, forward
    and backward, instead of twenty. Under XLA, its CPU reduction of a
    fused ``x * x`` runs at a quarter of the speed of a plain ``sum(x)``,
    but a matrix-vector product with the same producer at full speed.

    * ``sum(x)`` and ``sum(x^2)`` per row: :func:`_row_sums`.
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
        return _row_sums(t, k, xla, centered=True)

    @custom_gradient
    def fn(*args):
        x, gamma, beta, compute, xf = unpack(args, has_gamma, has_beta)
        shift, mean, _, rstd, ok = stats(xf, sample=lambda: xf[:, :1], reduce=reduce, count=float(k),
                                          epsilon=epsilon, sums=sums, subsample_axis=1 if subsample else None,
                                          refine_axis=1)
        gam = None if gamma is None else tf.cast(gamma, compute)
        bet = None if beta is None else tf.cast(beta, compute)
        offset = -mean * rstd
        t = cond(ok, lambda: xf * rstd + offset, lambda: (xf - shift) * rstd + offset)
        if gam is None and bet is None:
            y = t
        elif compute == tf.float32 and not xla and fused:
            y = _affine_columns(t, gam, bet)
        else:  # the fused kernel has no float64, and its fixed cost outweighs a small input's two passes
            y = t if gam is None else t * gam
            y = y if bet is None else y + bet

        def grad(dy):
            g = tf.cast(dy, compute)
            r, m = tf.reshape(rstd, [-1]), tf.reshape(mean, [-1])

            def terms(xr, mr):
                # xr: x, or x centered as the forward pass did; mr its mean
                # (None once centered). sum(g * gamma * (x - mean)) per row is
                # sum(g * gamma * xr) - mr * sum(g * gamma).
                gx = g * xr
                rows = (lambda t: tf.linalg.matvec(t, gam)) if gam is not None else (
                    lambda t: tf.reduce_sum(t, axis=1))
                big_a = rows(g)
                big_b = rows(gx)
                dgamma = tf.linalg.matvec(gx, r, transpose_a=True)
                if mr is not None:
                    big_b = big_b - mr * big_a
                    dgamma = dgamma - tf.linalg.matvec(g, mr * r, transpose_a=True)
                k_x = -(r * r * r) * big_b / k
                k_0 = -r * big_a / k if mr is None else -r * big_a / k - k_x * mr
                gg = g if gam is None else g * gam
                dx = gg * r[:, None] + (xr * k_x[:, None] + k_0[:, None])
                return dx, dgamma

            dx, dgamma = cond(ok, lambda: terms(xf, m),
                              lambda: terms((xf - shift) - mean, None))
            grads = [tf.cast(dx, x.dtype)]
            if gamma is not None:
                grads.append(tf.cast(dgamma, gamma.dtype))
            if beta is not None:
                grads.append(tf.cast(tf.reduce_sum(g, axis=0), beta.dtype))
            return grads

        return tf.cast(y, x.dtype), grad

    return fn


def _rms_norm_rows_fn(epsilon, has_gamma, has_beta, k, xla, fused):
    """RMS norm of the rows of a 2-D ``(rows, k)`` view, in the passes of
    :func:`_layer_norm_rows_fn`: nothing is subtracted, so there is no
    shift, no mean and no decision (as :func:`normlab.ops.moments.mean_square`).

    * ``sum(x^2)`` per row: :func:`_row_sums`.
    * ``y = x * rstd`` per row, then ``gamma`` and ``beta`` per column
      (outside XLA in one fused-kernel pass, :func:`_affine_columns`).
    * Backward: ``dy * x`` once; ``sum(dy * gamma * x)`` per row and
      ``dgamma`` per column are matrix-vector products of it;
      ``dx = (dy * gamma) * rstd - x * rstd^3 * sum(dy * gamma * x) / k``.
    """

    @custom_gradient
    def fn(*args):
        x, gamma, beta, compute, xf = unpack(args, has_gamma, has_beta)
        rstd = tf.math.rsqrt(_row_sums(xf, k, xla, centered=False)[1] / float(k) + epsilon)
        gam = None if gamma is None else tf.cast(gamma, compute)
        bet = None if beta is None else tf.cast(beta, compute)
        t = xf * rstd
        if gam is None and bet is None:
            y = t
        elif compute == tf.float32 and not xla and fused:
            y = _affine_columns(t, gam, bet)
        else:
            y = t if gam is None else t * gam
            y = y if bet is None else y + bet

        def grad(dy):
            g = tf.cast(dy, compute)
            r = tf.reshape(rstd, [-1])
            gx = g * xf
            dot = tf.reduce_sum(gx, axis=1) if gam is None else tf.linalg.matvec(gx, gam)
            gg = g if gam is None else g * gam
            dx = gg * rstd + xf * (-(r * r * r) * dot / k)[:, None]
            grads = [tf.cast(dx, x.dtype)]
            if gamma is not None:
                grads.append(tf.cast(tf.linalg.matvec(gx, r, transpose_a=True), gamma.dtype))
            if beta is not None:
                grads.append(tf.cast(tf.reduce_sum(g, axis=0), beta.dtype))
            return grads

        return tf.cast(y, x.dtype), grad

    return fn


def rms_norm(x, *, axes, gamma, beta, epsilon):
    """RMS norm over trailing ``axes`` (:func:`_rms_norm_rows_fn`); other axes
    decline, and so do graphs outside XLA that differentiate nothing.

    Those (``predict``, every exporter's trace) would get the general path's
    ops with a reshape to rows and back, which costs LiteRT a copy each way:
    30 against 12 us on one thread for (1, 128, 768), where Keras' layer
    takes 12 us; the forward alone is no faster in TensorFlow either. A
    training step keeps the hook (its backward: 56 against 84 ms for
    (32, 512, 1024) in a ``tf.function``).
    """
    if not usable(x):
        return None
    gamma, beta = param(gamma), param(beta)
    if inference_graph(x, gamma, beta):
        return None
    axes = tuple(int(a) for a in axes)
    rank = x.shape.rank
    if axes != tuple(range(rank - len(axes), rank)):
        return None
    width = math.prod(x.shape[rank - len(axes):])
    fn = _rms_norm_rows_fn(float(epsilon), gamma is not None, beta is not None, width, in_xla(), fused_serves(x))
    flat = [tf.reshape(t, [width]) for t in (gamma, beta) if t is not None]
    return tf.reshape(fn(tf.reshape(x, [-1, width]), *flat), tf.shape(x))


def layer_norm(x, *, axes, gamma, beta, epsilon):
    """Layer norm over trailing ``axes`` (:func:`_layer_norm_rows_fn`) or any
    others (:func:`_layer_norm_fn`); graphs outside XLA that differentiate
    nothing decline, as :func:`rms_norm`'s do.

    Those (``predict``, every exporter's trace) need statistics without a
    ``tf.cond``, whose branch full-integer LiteRT quantization calibrates only
    where the float model took it (100% off at an offset of 50, Keras' layer
    1.4%): the hook's moments about a subsample mean quantize 32.6% off near
    zero where Keras' layer is 15.6% off, the general path's two passes 7.1%
    (``docs/deploying.md``). The general path is about as fast there as
    Keras' layer: 11.2 against 10.9 ms for (4096, 1024), 1.96 against 2.10
    for (8, 128, 768) (one thread, 10% from run to run; the hook's
    conditional statistics took 6.0 and 1.46).
    """
    if not usable(x):
        return None
    gamma, beta = param(gamma), param(beta)
    if inference_graph(x, gamma, beta):
        return None
    axes = tuple(int(a) for a in axes)
    args = [t for t in (gamma, beta) if t is not None]
    k = len(axes)
    if axes == tuple(range(x.shape.rank - k, x.shape.rank)):
        width = math.prod(x.shape[x.shape.rank - k:])
        fn = _layer_norm_rows_fn(float(epsilon), gamma is not None, beta is not None, width, in_xla(),
                                 use_subsample(x, *args), fused_serves(x))
        flat = [tf.reshape(t, [width]) for t in args]
        return tf.reshape(fn(tf.reshape(x, [-1, width]), *flat), tf.shape(x))
    if exportable_graph() and not in_xla():
        # Non-trailing axes in a graph outside XLA (tf.function; every exporter's
        # trace): the general path. OpenVINO's CPU plugin computed this hook's
        # graph wrong with a dynamic batch (off by 2e2, or NaN, changing from one
        # compile to the next), and tf2onnx mis-shapes it once its cond is removed.
        return None
    fn = _layer_norm_fn(axes, float(epsilon), gamma is not None, beta is not None, tuple(x.shape),
                        use_subsample(x, *args))
    return fn(*([x] + args))
