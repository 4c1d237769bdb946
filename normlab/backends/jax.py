"""JAX fast paths: XLA-friendly formulations with a closed-form backward.

The numerics follow the general path's policy (statistics in float32 at
least, exact at large offsets, ``(x - shift) - mean`` formed before
scaling); what changes is how XLA sees them:

* Statistics are first the plain one-pass moments, which XLA fuses into
  reading ``x`` (no centered copy), kept only where each slice's offset is
  within twice its spread and they are within a few roundings of the
  two-pass formula;
  otherwise they are recomputed relative to the plain moments' mean (or a
  sample element of each slice, a constant slice's value), with an exact
  second pass where that shift is far, all decided by ``lax.cond`` in the
  graph (:func:`normlab.backends.policy.stats`, shared with TensorFlow; the
  bounds and why they are exact are there; :data:`REFINED_SHIFT`). The shift
  is computed once, outside the fusions that subtract it: XLA's CPU code
  generator contracts ``x - s * (1/n)`` into a fused multiply-add in some
  fusions and not in others, which at an offset of 1e4 shifts one fusion's
  residuals against another's by 1e-3.

* Group and batch statistics are reduced per channel on a free reshape of
  the input to ``(N, P, C)`` (channels-last), ``(N, C, Q)``
  (channels-first) or ``(N, P, C, Q)``, which XLA's CPU backend reduces at
  memory speed, and only then summed over each group's channels (a tiny
  ``(N, C)`` array). Reducing the grouped ``(N, S, G, C/G)`` view directly,
  as the general path does, or a 4-D view with a size-1 axis, is several
  times slower.
* The backward is ``jax.custom_vjp`` with the closed form
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * gamma``,
  recomputing ``xhat`` from the saved input and per-slice statistics: two
  fused passes instead of the transposes of every reshape, cast and
  broadcast that autodiff produces, and nothing of the input's size saved
  besides the input itself. JAX runs no ``custom_vjp`` in forward mode, so
  the hooks decline under ``jax.jvp``/``jax.jacfwd`` (:func:`normlab.backends.jax_guards.forward_mode`).

* Each hook runs under its own ``jax.jit`` outside a staged trace,
  keyed on the static arguments: called eagerly, the ``lax.cond``
  branches (fresh closures on every call) were traced and compiled again
  each time, about 130 ms per call. Inside a staged trace (an outer
  ``jax.jit``, ``jax.export``, an exporter's ``make_jaxpr``) the op is
  traced into it directly (:func:`normlab.backends.jax_guards.eager_jit`).

Every shape and float dtype is served (float16/bfloat16 are computed in float32
and cast back); non-float, empty and 1-D inputs decline, as do inputs that vary
over a ``shard_map`` axis or are split over devices (:mod:`normlab.backends.jax_guards`). Batch norm with given
statistics is served eagerly only, as one jitted call (:func:`batch_norm_infer`). RMS norm, which subtracts
nothing and so needs no statistics policy, is in
:mod:`normlab.backends.jax_rms_norm`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from keras import ops

from normlab.backends import policy
from normlab.backends.jax_guards import eager_jit, staged, usable
from normlab.backends.jax_rms_norm import rms_norm_op


def _compute_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _param(param, dtype):
    if param is None or isinstance(param, jax.Array):  # (jnp.asarray of an array costs an eager call 20 us)
        return param
    return jnp.asarray(ops.convert_to_tensor(param))


#: The array primitives of :func:`normlab.backends.policy.stats`.
_XP = policy.ArrayOps(
    maximum=jnp.maximum, all=jnp.all, any=jnp.any, isfinite=jnp.isfinite, cond=jax.lax.cond,
    stop_gradient=jax.lax.stop_gradient, zeros_like=jnp.zeros_like, rsqrt=jax.lax.rsqrt,
)


def _stats(xf, *, sample, reduce, count, epsilon) -> policy.Stats:
    """:func:`normlab.backends.policy.stats` with XLA's fused reductions:
    the plain moments where every slice's offset is within twice its spread, else
    moments about the plain moments' mean (:data:`REFINED_SHIFT`), with an exact
    second pass where that shift is far, decided by ``lax.cond``."""
    return policy.stats(xf, sample=sample, sums=lambda t: (reduce(t), reduce(t * t)), reduce=reduce,
                        count=count, epsilon=epsilon, xp=_XP, refine=_refine)


def _refine(anchor, mean):
    """The shift of the shifted moments: the plain moments' ``mean`` (the
    ``lax.cond``'s operand, so every fusion reads the same bits), or the
    sample ``anchor`` where it is within :data:`~normlab.backends.policy.ANCHOR_EPS` epsilons of that
    mean (a constant slice's value, exactly) or the mean is not finite."""
    tolerance = policy.ANCHOR_EPS * jnp.finfo(mean.dtype).eps
    near = jnp.abs(mean - anchor) <= tolerance * jnp.abs(mean)
    return jnp.where(near | ~jnp.isfinite(mean), anchor, mean)


#: XLA's CPU sums of thousands of terms err by up to 1.4e-7 relative (one or
#: two roundings; 4e-8 to 1.4e-7 measured at 4096 to 98304 terms), which
#: one-pass moments about a sample ``r`` variances from the mean multiply by
#: ``1 + r`` (up to 17): about each slice's first value, 3 standard deviations
#: out, group, layer, instance and batch norm on ``1e4 + N(0, 1)`` ((4, 64, 64,
#: 16)) were 2.2e-6 to 4.4e-6 off float64, and a sample's outputs moved by up
#: to 4.8e-6 when a far sample joined its batch (sending every slice to the
#: shifted moments). Where the plain moments are not kept, the shifted ones
#: are taken about the plain moments' mean instead, which costs no pass: 4.6e-7
#: to 5.2e-7 there, and no move. That mean is off by the plain sum's error, a
#: small fraction of a standard deviation for any slice whose spread is not at
#: the rounding of its offset (there the exact second pass takes over). The
#: shift is that mean as computed once, an operand of the ``lax.cond``: XLA's
#: CPU code generator contracts ``x - t * (1/n)`` into a fused multiply-add in
#: some fusions and not in others, which at an offset of 1e4 shifted one
#: fusion's residuals against another's by 1e-3 when the mean was recomputed
#: in each.
REFINED_SHIFT = "plain mean"


# --------------------------------------------------------------------------
# Channel statistics: group norm (per sample) and batch norm (per batch).
# The input is viewed as (N, P, C, Q) (P the axes before the channel axis, Q
# those after) with the trivial side dropped: (N, P, C) for channels-last data,
# (N, C, Q) for channels-first. XLA's CPU backend reduces those 3-D views at
# memory speed, but a 4-D view with a size-1 axis several times slower (on
# (8, 3136, 256, 1), summing over axes (1, 3) takes 5x as long as over axis 1
# of (8, 3136, 256)). Statistics have the view's rank, with N or 1 and C kept.


def _channel_view(x, axis):
    """``(view, channel axis of the view)`` of ``x`` for per-channel reductions."""
    shape = x.shape
    n, c = shape[0], shape[axis]
    p, q = math.prod(shape[1:axis]), math.prod(shape[axis + 1:])
    if q == 1:
        return x.reshape(n, p, c), 2
    if p == 1:
        return x.reshape(n, c, q), 1
    return x.reshape(n, p, c, q), 2


def _reduce_axes(ndim, ca, batch):
    return tuple(i for i in range(0 if batch else 1, ndim) if i != ca)


def _param_shape(ndim, ca, c):
    return tuple(c if i == ca else 1 for i in range(ndim))


def _group_sum(t, groups):
    """Sums a per-channel statistic (N or 1 first, channels at one axis, 1
    elsewhere) over each group of channels and broadcasts the group total
    back to every channel of the group."""
    n, c = t.shape[0], t.size // t.shape[0]
    if groups is None or groups == c:
        return t
    total = t.reshape(n, groups, c // groups).sum(axis=2, keepdims=True)
    return jnp.broadcast_to(total, (n, groups, c // groups)).reshape(t.shape)


def _channel_count(shape, ca, batch, groups):
    c = shape[ca]
    per_group = c // groups if groups is not None else 1
    return math.prod(shape[i] for i in _reduce_axes(len(shape), ca, batch)) * per_group


def _channel_stats(xf, ca, batch, groups, epsilon):
    n, c = xf.shape[0], xf.shape[ca]
    axes = _reduce_axes(xf.ndim, ca, batch)
    count = _channel_count(xf.shape, ca, batch, groups)

    def reduce(t):
        return _group_sum(jnp.sum(t, axis=axes, keepdims=True), groups)

    def sample():
        if batch:
            first = xf[tuple(slice(None) if i == ca else slice(0, 1) for i in range(xf.ndim))]
            return first
        g = groups if groups is not None else c
        index = tuple(slice(None, None, c // g) if i == ca else slice(None) if i == 0 else slice(0, 1)
                      for i in range(xf.ndim))
        first = xf[index].reshape(n, g, 1)  # the first element of each group
        return jnp.broadcast_to(first, (n, g, c // g)).reshape(
            (n,) + _param_shape(xf.ndim, ca, c)[1:])

    return _stats(xf, sample=sample, reduce=reduce, count=count, epsilon=epsilon)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _channel_norm(xv, gamma, beta, ca, batch, groups, epsilon):
    return _channel_norm_fwd(xv, gamma, beta, ca, batch, groups, epsilon)[0]


def _channel_norm_fwd(xv, gamma, beta, ca, batch, groups, epsilon):
    compute = _compute_dtype(xv.dtype)
    c = xv.shape[ca]
    pshape = _param_shape(xv.ndim, ca, c)
    xf = xv.astype(compute)
    shift, mean, var, rstd, _ = _channel_stats(xf, ca, batch, groups, epsilon)
    scale = rstd if gamma is None else rstd * gamma.astype(compute).reshape(pshape)
    y = ((xf - shift) - mean) * scale
    if beta is not None:
        y = y + beta.astype(compute).reshape(pshape)
    stats_mean = (shift + mean).reshape(c) if batch else None
    stats_var = var.reshape(c) if batch else None
    out = (y.astype(xv.dtype), stats_mean, stats_var)
    return out, (xv, gamma, beta, shift, mean, rstd)


def _channel_norm_bwd(ca, batch, groups, epsilon, residuals, cotangents):
    xv, gamma, beta, shift, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    compute = _compute_dtype(xv.dtype)
    c = xv.shape[ca]
    pshape = _param_shape(xv.ndim, ca, c)
    count = _channel_count(xv.shape, ca, batch, groups)
    g = dy.astype(compute)
    xc = (xv.astype(compute) - shift) - mean
    axes = _reduce_axes(xv.ndim, ca, batch)
    a = jnp.sum(g, axis=axes, keepdims=True)  # per (sample,) channel: sum dy
    b = jnp.sum(g * xc, axis=axes, keepdims=True)  # sum dy * (x - mean)
    gam = None if gamma is None else gamma.astype(compute).reshape(pshape)
    ga, gb = (a, b) if gam is None else (a * gam, b * gam)
    big_a = _group_sum(ga, groups)
    big_b = _group_sum(gb, groups)
    k_dy = rstd if gam is None else rstd * gam
    k_xc = -(rstd * rstd * rstd) * big_b / count
    k_0 = -rstd * big_a / count
    if batch:  # the returned statistics may carry cotangents too
        if dvar is not None:
            k_xc = k_xc + (2.0 / count) * dvar.astype(compute).reshape(pshape)
        if dmean is not None:
            k_0 = k_0 + dmean.astype(compute).reshape(pshape) / count
    dx = (g * k_dy + xc * k_xc + k_0).astype(xv.dtype)
    dgamma = None if gamma is None else jnp.sum(b * rstd, axis=0).reshape(c).astype(gamma.dtype)
    dbeta = None if beta is None else jnp.sum(a, axis=0).reshape(c).astype(beta.dtype)
    return dx, dgamma, dbeta


_channel_norm.defvjp(_channel_norm_fwd, _channel_norm_bwd)
_channel_norm_call = eager_jit(_channel_norm, static_argnums=(3, 4, 5, 6))


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not usable(x, gamma, beta):
        return None
    xv, ca = _channel_view(x, axis)
    y, _, _ = _channel_norm_call(xv, gamma, beta, ca, False, int(groups), float(epsilon))
    return y.reshape(x.shape)


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not usable(x, gamma, beta):
        return None
    xv, ca = _channel_view(x, axis)
    y, mean, var = _channel_norm_call(xv, gamma, beta, ca, True, None, float(epsilon))
    return y.reshape(x.shape), mean, var


# --------------------------------------------------------------------------
# Layer norm: statistics over arbitrary feature axes, elementwise affine.


def _ln_stats(xf, axes, epsilon):
    count = math.prod(xf.shape[a] for a in axes)

    def sample():
        index = tuple(slice(0, 1) if i in axes else slice(None) for i in range(xf.ndim))
        return xf[index]

    stats = _stats(xf, sample=sample, reduce=lambda t: jnp.sum(t, axis=axes, keepdims=True),
                   count=count, epsilon=epsilon)
    return stats.shift, stats.mean, stats.rstd


def _ln_param_shape(shape, axes):
    return tuple(d if i in axes else 1 for i, d in enumerate(shape))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, gamma, beta, axes, epsilon):
    return _layer_norm_fwd(x, gamma, beta, axes, epsilon)[0]


def _layer_norm_fwd(x, gamma, beta, axes, epsilon):
    compute = _compute_dtype(x.dtype)
    pshape = _ln_param_shape(x.shape, axes)
    xf = x.astype(compute)
    shift, mean, rstd = _ln_stats(xf, axes, epsilon)
    scale = rstd if gamma is None else rstd * gamma.astype(compute).reshape(pshape)
    y = ((xf - shift) - mean) * scale
    if beta is not None:
        y = y + beta.astype(compute).reshape(pshape)
    return y.astype(x.dtype), (x, gamma, beta, shift, mean, rstd)


def _layer_norm_bwd(axes, epsilon, residuals, dy):
    x, gamma, beta, shift, mean, rstd = residuals
    compute = _compute_dtype(x.dtype)
    pshape = _ln_param_shape(x.shape, axes)
    count = math.prod(x.shape[a] for a in axes)
    others = tuple(i for i in range(x.ndim) if i not in axes)
    g = dy.astype(compute)
    xc = (x.astype(compute) - shift) - mean
    gam = None if gamma is None else gamma.astype(compute).reshape(pshape)
    gg = g if gam is None else g * gam
    big_a = jnp.sum(gg, axis=axes, keepdims=True)
    big_b = jnp.sum(gg * xc, axis=axes, keepdims=True)
    dx = gg * rstd - (rstd * big_a + xc * (rstd * rstd * rstd) * big_b) / count
    dgamma = dbeta = None
    if gamma is not None:
        dgamma = jnp.sum(g * xc * rstd, axis=others).reshape(gamma.shape).astype(gamma.dtype)
    if beta is not None:
        dbeta = jnp.sum(g, axis=others).reshape(beta.shape).astype(beta.dtype)
    return dx.astype(x.dtype), dgamma, dbeta


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
_layer_norm_call = eager_jit(_layer_norm, static_argnums=(3, 4))
_rms_norm_call = eager_jit(rms_norm_op, static_argnums=(3, 4))


def layer_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not usable(x, gamma, beta, reduced=tuple(axes)):
        return None
    return _layer_norm_call(x, gamma, beta, tuple(int(a) for a in axes), float(epsilon))


def rms_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not usable(x, gamma, beta, reduced=tuple(axes)):
        return None
    return _rms_norm_call(x, gamma, beta, tuple(int(a) for a in axes), float(epsilon))


# --------------------------------------------------------------------------
# Batch norm with given statistics (inference): no statistics to compute, but
# called eagerly the general path's ops dispatch one by one (0.7 ms on (2, 16,
# 16, 8), where one jitted call takes 13 us). Under a staged trace the hook
# declines: the general path's ops are traced into it, the same computation.


def _batch_norm_infer(x, mean, variance, gamma, beta, axis, epsilon):
    """The general path's computation (:func:`normlab.ops.normalize` of the
    per-channel statistics), traced once per signature."""
    # Imported here: normlab.ops.normalize imports normlab.backends, which imports this module.
    from normlab.ops.axes import feature_param
    from normlab.ops.normalize import normalize

    ndim, c = x.ndim, x.shape[axis]
    mean, variance, gamma, beta = (feature_param(p, ndim, [axis], [c]) for p in (mean, variance, gamma, beta))
    return normalize(x, mean, variance, gamma=gamma, beta=beta, epsilon=epsilon)


_batch_norm_infer_call = jax.jit(_batch_norm_infer, static_argnums=(5, 6))


def batch_norm_infer(x, *, axis, mean, variance, gamma, beta, epsilon):
    if staged():
        return None
    mean, variance, gamma, beta = (_param(p, x.dtype) for p in (mean, variance, gamma, beta))
    if not usable(x, mean, variance, gamma, beta, reduced=()):
        return None
    return _batch_norm_infer_call(x, mean, variance, gamma, beta, int(axis), float(epsilon))

