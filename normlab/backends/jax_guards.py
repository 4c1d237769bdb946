"""When the JAX fast paths must stand aside (per-device data inside
``shard_map``, forward-mode AD, split axes under explicit sharding, a size
JAX cannot tell), and how they are jitted (see :mod:`normlab.backends.jax`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normlab.ops.sharding import split_axes

#: The dtypes the hooks serve (float16/bfloat16 computed in float32).
FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def varying(x) -> bool:
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


def forward_mode() -> bool:
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


def staged() -> bool:
    """Whether this call is being traced into a jaxpr (``jax.jit``,
    ``jax.export``, ``make_jaxpr``), at any depth of the traces around it."""
    trace = getattr(_core.trace_ctx, "trace", None) if _AD_TRACES is not None else None
    while trace is not None:
        if isinstance(trace, _pe.DynamicJaxprTrace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


def eager_jit(fn, static_argnums):
    """``fn`` under its own ``jax.jit`` where the call is not staged, else ``fn``
    traced into the enclosing jaxpr. An inner ``jax.jit`` would keep what it traced
    in its cache, for every later call of the same shapes: jax2onnx traces with
    ``jax.numpy`` functions of its own, which then failed every eager call of the
    exported shapes after the export ("MLIR translation rule for primitive
    'jax.numpy.sum' not found"); under an outer jit the inner one is inlined anyway."""
    jitted = jax.jit(fn, static_argnums=static_argnums)
    return lambda *args: fn(*args) if staged() else jitted(*args)


def usable(x, *params, reduced: tuple[int, ...] | None = None) -> bool:
    """Whether the hooks serve ``x`` and its (converted) ``params``: none of them
    per-device inside ``shard_map`` (a replicated ``x`` with per-device ``gamma``
    would get a per-device gradient from the custom backward, which its type
    check rejects), no forward-mode AD, and under explicit sharding no parameter
    split (``dx`` would get its sharding) nor any of the ``reduced`` axes (by
    default any): the kernels' sample slices and channel views are type errors."""
    return (hasattr(x, "dtype") and x.dtype in FLOATS and x.ndim >= 2 and has_elements(x) and not varying(x)
            and not any(p is not None and (varying(p) or split_axes(p)) for p in params) and not forward_mode()
            and not split_axes(x).intersection(range(x.ndim) if reduced is None else reduced))


_INCONCLUSIVE = getattr(jax.errors, "InconclusiveDimensionOperation", ())


def has_elements(x) -> bool:
    """Whether ``x`` has elements (its static size); False where JAX cannot
    tell: a ``jax.export`` symbolic size that may be 0, as ``max(h - 2, 0)``
    after a valid convolution, which the general path serves."""
    try:
        return x.size > 0
    except _INCONCLUSIVE:
        return False
