"""JAX fast paths: XLA-friendly formulations with a closed-form backward.

The numerics follow the general path's policy (statistics in float32 at
least, exact at large offsets, ``(x - shift) - mean`` formed before
scaling); what changes is how XLA sees them:

* Statistics are first the plain one-pass moments, which XLA fuses into
  reading ``x`` (no centered copy), kept only where each slice's offset is
  within its spread and they are as exact as the two-pass formula;
  otherwise they are recomputed relative to a sample element of each
  slice (:func:`_stats`, :func:`_shifted_stats`). The shift is never a
  computed mean: XLA's CPU code generator contracts ``x - s * (1/n)`` into
  a fused multiply-add in some fusions and not in others, which at an
  offset of 1e4 shifts one fusion's residuals against another's by 1e-3.

* Group and batch statistics are reduced per channel on a free reshape of
  the input to ``(N, P, C, Q)`` (``P`` the axes before the channel axis,
  ``Q`` those after), which XLA's CPU backend reduces at memory speed,
  and only then summed over each group's channels (a tiny ``(N, C)``
  array). Reducing the grouped ``(N, S, G, C/G)`` view directly, as the
  general path does, is several times slower.
* The backward is ``jax.custom_vjp`` with the closed form
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * gamma``,
  recomputing ``xhat`` from the saved input and per-slice statistics: two
  fused passes instead of the transposes of every reshape, cast and
  broadcast that autodiff produces, and nothing of the input's size saved
  besides the input itself.

Every shape and dtype is served (float16/bfloat16 are computed in float32
and cast back); only non-float inputs decline.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from keras import ops

_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)

#: Plain one-pass moments are kept while ``E[x]^2 <= var + epsilon``.
_MAX_RAW_RATIO = 1.0

#: A slice's sample shift is kept for a one-pass variance while
#: ``(mean - shift)^2 <= _MAX_SHIFT_RATIO * (var + epsilon)``: the relative
#: error of ``E[d^2] - E[d]^2`` is then within 17 roundings.
_MAX_SHIFT_RATIO = 16.0


def _compute_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _param(param, dtype):
    if param is None:
        return None
    return jnp.asarray(ops.convert_to_tensor(param))


def _varying(x) -> bool:
    """Whether ``x`` is per-device data inside ``shard_map`` (varying over a manual axis).

    The custom backward would return per-device gradients for replicated
    ``gamma``/``beta``, which ``shard_map``'s type check rejects; the general
    path's autodiff sums them over the devices itself.
    """
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; "vma" before
    return bool(manual.varying if manual is not None else getattr(aval, "vma", None))


def _usable(x) -> bool:
    return hasattr(x, "dtype") and x.dtype in _FLOATS and x.ndim >= 2 and x.size > 0 and not _varying(x)


# --------------------------------------------------------------------------
# Channel statistics: group norm (per sample) and batch norm (per batch).
# x4 has shape (N, P, C, Q); statistics broadcast as (N or 1, 1, C, 1).


def _group_sum(t, groups):
    """Sums a (n, 1, C, 1) per-channel array over each group of channels and
    broadcasts the group total back to every channel of the group."""
    if groups is None:
        return t
    n, c = t.shape[0], t.shape[2]
    if groups == c:
        return t
    t = t.reshape(n, groups, c // groups).sum(axis=2, keepdims=True)
    return jnp.broadcast_to(t, (n, groups, c // groups)).reshape(n, 1, c, 1)


def _channel_reduce(t, batch, groups):
    t = jnp.sum(t, axis=(0, 1, 3) if batch else (1, 3), keepdims=True)
    return _group_sum(t, groups)


def _channel_count(shape, batch, groups):
    n, p, c, q = shape
    per_group = c // groups if groups is not None else 1
    return (n if batch else 1) * p * q * per_group


def _shifted_stats(xf, shift, reduce, count, epsilon):
    """Mean (relative to ``shift``), variance and rstd of ``xf``.

    ``shift`` is an element of each slice, so ``xf - shift`` is formed
    without rounding at the scale of an offset, and no product ever feeds
    that subtraction: XLA's CPU code generator contracts ``x - s * (1/n)``
    into a fused multiply-add in some fusions and not in others, which at
    an offset of 1e4 shifts the residuals of one fusion against another's
    by an ulp of the offset. One pass gives ``sum(d)`` and ``sum(d^2)``;
    where the sample lies more than four standard deviations from its
    slice's mean (``sum(d^2)`` would then cancel), a second pass computes
    the variance around the mean exactly.
    """
    d = xf - shift
    mean = reduce(d) / count
    var = jnp.maximum(reduce(d * d) / count - mean * mean, 0.0)
    far = jnp.any(mean * mean > _MAX_SHIFT_RATIO * (var + epsilon))

    def two_pass():  # recomputes d: a branch's captured operands are materialized
        r = (xf - shift) - mean
        return reduce(r * r) / count

    var = jax.lax.cond(far, two_pass, lambda: var)
    return mean, var


def _stats(xf, sample, reduce, count, epsilon):
    """``(shift, mean, var, rstd)`` of ``xf``, ``mean`` relative to ``shift``.

    First the plain one-pass moments ``E[x]``, ``E[x^2]`` (two reductions
    XLA fuses into reading ``x`` once each, as Keras' own moments do), kept
    only if every slice has ``E[x]^2 <= var + epsilon`` and all is finite:
    their relative error is then within a few roundings of the two-pass
    formula's. Otherwise (an offset larger than the spread) the statistics
    are recomputed relative to a sample of each slice (``sample()``), see
    :func:`_shifted_stats`; the apply step subtracts ``shift`` first.
    """
    mean0 = reduce(xf) / count
    var0 = jnp.maximum(reduce(xf * xf) / count - mean0 * mean0, 0.0)
    ok = jnp.all(mean0 * mean0 <= _MAX_RAW_RATIO * (var0 + epsilon)) & jnp.all(jnp.isfinite(var0))

    def raw():
        return jnp.zeros_like(mean0), mean0, var0

    def shifted():
        shift = jax.lax.stop_gradient(sample())
        mean, var = _shifted_stats(xf, shift, reduce, count, epsilon)
        return shift, mean, var

    shift, mean, var = jax.lax.cond(ok, raw, shifted)
    return shift, mean, var, jax.lax.rsqrt(var + epsilon)


def _channel_stats(xf, batch, groups, epsilon):
    n, p, c, q = xf.shape
    count = _channel_count(xf.shape, batch, groups)

    def sample():
        if batch:
            return jnp.broadcast_to(xf[:1, :1, :, :1], (1, 1, c, 1))
        g = groups if groups is not None else c
        first = xf[:, :1, :: c // g, :1]  # the first element of each group
        return jnp.broadcast_to(first.reshape(n, 1, g, 1, 1), (n, 1, g, c // g, 1)).reshape(n, 1, c, 1)

    return _stats(xf, sample, lambda t: _channel_reduce(t, batch, groups), count, epsilon)


def _affine_shape(c):
    return (1, 1, c, 1)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _channel_norm(x4, gamma, beta, batch, groups, epsilon):
    return _channel_norm_fwd(x4, gamma, beta, batch, groups, epsilon)[0]


def _channel_norm_fwd(x4, gamma, beta, batch, groups, epsilon):
    compute = _compute_dtype(x4.dtype)
    c = x4.shape[2]
    xf = x4.astype(compute)
    shift, mean, var, rstd = _channel_stats(xf, batch, groups, epsilon)
    scale = rstd if gamma is None else rstd * gamma.astype(compute).reshape(_affine_shape(c))
    y = ((xf - shift) - mean) * scale
    if beta is not None:
        y = y + beta.astype(compute).reshape(_affine_shape(c))
    stats_mean = (shift + mean).reshape(c) if batch else None
    stats_var = var.reshape(c) if batch else None
    out = (y.astype(x4.dtype), stats_mean, stats_var)
    return out, (x4, gamma, beta, shift, mean, rstd)


def _channel_norm_bwd(batch, groups, epsilon, residuals, cotangents):
    x4, gamma, beta, shift, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    compute = _compute_dtype(x4.dtype)
    c = x4.shape[2]
    count = _channel_count(x4.shape, batch, groups)
    g = dy.astype(compute)
    xc = (x4.astype(compute) - shift) - mean
    axes = (0, 1, 3) if batch else (1, 3)
    a = jnp.sum(g, axis=axes, keepdims=True)  # per (sample,) channel: sum dy
    b = jnp.sum(g * xc, axis=axes, keepdims=True)  # sum dy * (x - mean)
    gam = None if gamma is None else gamma.astype(compute).reshape(_affine_shape(c))
    ga, gb = (a, b) if gam is None else (a * gam, b * gam)
    big_a = _group_sum(ga, groups)
    big_b = _group_sum(gb, groups)
    k_dy = rstd if gam is None else rstd * gam
    k_xc = -(rstd * rstd * rstd) * big_b / count
    k_0 = -rstd * big_a / count
    if batch:  # the returned statistics may carry cotangents too
        if dvar is not None:
            k_xc = k_xc + (2.0 / count) * dvar.astype(compute).reshape(_affine_shape(c))
        if dmean is not None:
            k_0 = k_0 + dmean.astype(compute).reshape(_affine_shape(c)) / count
    dx = (g * k_dy + xc * k_xc + k_0).astype(x4.dtype)
    dgamma = None if gamma is None else jnp.sum(b * rstd, axis=(0, 1, 3)).astype(gamma.dtype)
    dbeta = None if beta is None else jnp.sum(a, axis=(0, 1, 3)).astype(beta.dtype)
    return dx, dgamma, dbeta


_channel_norm.defvjp(_channel_norm_fwd, _channel_norm_bwd)


def _as_4d(x, axis):
    shape = x.shape
    p = math.prod(shape[1:axis])
    q = math.prod(shape[axis + 1:])
    return x.reshape(shape[0], p, shape[axis], q)


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    y, _, _ = _channel_norm(_as_4d(x, axis), gamma, beta, False, int(groups), float(epsilon))
    return y.reshape(x.shape)


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    y, mean, var = _channel_norm(_as_4d(x, axis), gamma, beta, True, None, float(epsilon))
    return y.reshape(x.shape), mean, var


# --------------------------------------------------------------------------
# Layer norm: statistics over arbitrary feature axes, elementwise affine.


def _ln_stats(xf, axes, epsilon):
    count = math.prod(xf.shape[a] for a in axes)

    def sample():
        index = tuple(slice(0, 1) if i in axes else slice(None) for i in range(xf.ndim))
        return xf[index]

    shift, mean, _, rstd = _stats(
        xf, sample, lambda t: jnp.sum(t, axis=axes, keepdims=True), count, epsilon
    )
    return shift, mean, rstd


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


def layer_norm(x, *, axes, gamma, beta, epsilon):
    if not _usable(x):
        return None
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    return _layer_norm(x, gamma, beta, tuple(int(a) for a in axes), float(epsilon))
