"""JAX fast paths: XLA-friendly formulations with a closed-form backward.

The numerics follow the general path's policy (statistics in float32 at
least, exact at large offsets, ``(x - shift) - mean`` formed before
scaling); what changes is how XLA sees them:

* Statistics are first the plain one-pass moments, which XLA fuses into
  reading ``x`` (no centered copy), kept only where each slice's offset is
  within twice its spread and they are within a few roundings of the
  two-pass formula;
  otherwise they are recomputed relative to a sample element of each
  slice, with an exact second pass where that sample is an outlier, all
  decided by ``lax.cond`` in the graph (:func:`normlab.backends.policy.stats`,
  shared with TensorFlow; the bounds and why they are exact are there).
  The shift is never a computed mean: XLA's CPU code generator contracts
  ``x - s * (1/n)`` into a fused multiply-add in some fusions and not in
  others, which at an offset of 1e4 shifts one fusion's residuals against
  another's by 1e-3.

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
  the hooks decline under ``jax.jvp``/``jax.jacfwd`` (:func:`_forward_mode`).

* Each hook runs under its own ``jax.jit`` outside a staged trace,
  keyed on the static arguments: called eagerly, the ``lax.cond``
  branches (fresh closures on every call) were traced and compiled again
  each time, about 130 ms per call. Inside a staged trace (an outer
  ``jax.jit``, ``jax.export``, an exporter's ``make_jaxpr``) the op is
  traced into it directly (:func:`_eager_jit`).

Every shape and dtype is served (float16/bfloat16 are computed in float32
and cast back); only non-float inputs decline. RMS norm, which subtracts
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
from normlab.backends.jax_rms_norm import rms_norm_op
from normlab.ops.sharding import split_axes

_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)

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


try:  # JAX's trace context (the "stackless" core, JAX >= 0.4.36); not public API
    from jax._src import core as _core
    from jax._src.interpreters import ad as _ad
    from jax._src.interpreters import partial_eval as _pe

    _AD_TRACES: tuple[type, type] | None = (_ad.JVPTrace, _ad.LinearizeTrace)
except (ImportError, AttributeError):  # pragma: no cover - another JAX: forward mode stays unserved
    _AD_TRACES = None


def _forward_mode() -> bool:
    """Whether the innermost autodiff around this call is forward mode.

    JAX runs no ``custom_vjp`` in forward mode (``jax.jvp``, ``jax.jacfwd``,
    ``jax.linearize``): there the hooks decline and the general path's
    plain ops serve the call. Reverse mode (``grad``, ``vjp``), including
    forward-over-reverse Hessian-vector products, keeps the fast backward.
    Read from the chain of traces this call runs under, innermost first;
    without JAX's trace context (another JAX version) it answers False.
    """
    if _AD_TRACES is None:
        return False
    jvp_trace, linearize_trace = _AD_TRACES
    trace = getattr(_core.trace_ctx, "trace", None)
    while trace is not None:
        if isinstance(trace, jvp_trace):
            return True
        if isinstance(trace, linearize_trace):  # grad and vjp (is_vjp), or jax.linearize (forward mode)
            return not getattr(trace, "is_vjp", True)
        trace = getattr(trace, "parent_trace", None)
    return False


def _staged() -> bool:
    """Whether this call is being traced into a jaxpr (``jax.jit``,
    ``jax.export``, ``make_jaxpr``), at any depth of the traces around it."""
    trace = getattr(_core.trace_ctx, "trace", None) if _AD_TRACES is not None else None
    while trace is not None:
        if isinstance(trace, _pe.DynamicJaxprTrace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


def _eager_jit(fn, static_argnums):
    """``fn`` under its own ``jax.jit`` where the call is not staged, else ``fn``
    traced into the enclosing jaxpr. An inner ``jax.jit`` would keep what it traced
    in its cache, for every later call of the same shapes: jax2onnx traces with
    ``jax.numpy`` functions of its own, which then failed every eager call of the
    exported shapes after the export ("MLIR translation rule for primitive
    'jax.numpy.sum' not found"); under an outer jit the inner one is inlined anyway."""
    jitted = jax.jit(fn, static_argnums=static_argnums)
    return lambda *args: fn(*args) if _staged() else jitted(*args)


def _usable(x, *params, reduced: tuple[int, ...] | None = None) -> bool:
    """Whether the hooks serve ``x`` and its (converted) ``params``: none of them
    per-device inside ``shard_map`` (a replicated ``x`` with per-device ``gamma``
    would get a per-device gradient from the custom backward, which its type
    check rejects), no forward-mode AD, and under explicit sharding no parameter
    split (``dx`` would get its sharding) nor any of the ``reduced`` axes (by
    default any): the kernels' sample slices and channel views are type errors."""
    return (hasattr(x, "dtype") and x.dtype in _FLOATS and x.ndim >= 2 and _has_elements(x) and not _varying(x)
            and not any(p is not None and (_varying(p) or split_axes(p)) for p in params) and not _forward_mode()
            and not split_axes(x).intersection(range(x.ndim) if reduced is None else reduced))


_INCONCLUSIVE = getattr(jax.errors, "InconclusiveDimensionOperation", ())


def _has_elements(x) -> bool:
    """Whether ``x`` has elements (its static size); False where JAX cannot
    tell: a ``jax.export`` symbolic size that may be 0, as ``max(h - 2, 0)``
    after a valid convolution, which the general path serves."""
    try:
        return x.size > 0
    except _INCONCLUSIVE:
        return False


#: The array primitives of :func:`normlab.backends.policy.stats`.
_XP = policy.ArrayOps(
    maximum=jnp.maximum, all=jnp.all, any=jnp.any, isfinite=jnp.isfinite, cond=jax.lax.cond,
    stop_gradient=jax.lax.stop_gradient, zeros_like=jnp.zeros_like, rsqrt=jax.lax.rsqrt,
)


def _stats(xf, *, sample, reduce, count, epsilon) -> policy.Stats:
    """:func:`normlab.backends.policy.stats` with XLA's fused reductions:
    the plain moments where every slice's offset is within twice its spread, else
    moments about a sample of each slice (and an exact second pass where
    that sample is an outlier), decided by ``lax.cond``."""
    return policy.stats(xf, sample=sample, sums=lambda t: (reduce(t), reduce(t * t)), reduce=reduce,
                        count=count, epsilon=epsilon, xp=_XP)


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
_channel_norm_call = _eager_jit(_channel_norm, static_argnums=(3, 4, 5, 6))


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not _usable(x, gamma, beta):
        return None
    xv, ca = _channel_view(x, axis)
    y, _, _ = _channel_norm_call(xv, gamma, beta, ca, False, int(groups), float(epsilon))
    return y.reshape(x.shape)


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not _usable(x, gamma, beta):
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
_layer_norm_call = _eager_jit(_layer_norm, static_argnums=(3, 4))
_rms_norm_call = _eager_jit(rms_norm_op, static_argnums=(3, 4))


def layer_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not _usable(x, gamma, beta, reduced=tuple(axes)):
        return None
    return _layer_norm_call(x, gamma, beta, tuple(int(a) for a in axes), float(epsilon))


def rms_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = _param(gamma, x.dtype), _param(beta, x.dtype)
    if not _usable(x, gamma, beta, reduced=tuple(axes)):
        return None
    return _rms_norm_call(x, gamma, beta, tuple(int(a) for a in axes), float(epsilon))
