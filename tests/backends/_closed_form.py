"""Float64 NumPy forward and vector-Jacobian products of the three
normalizations, and of RMS norm, written from the formulas (not from any
backend), for the fast-path parity tests.

Every normalization here is ``y = (x - mean) * rstd * gamma + beta`` with
statistics over the elements of a slice; its gradient for a cotangent
``dy`` is, with ``g = dy * gamma`` and ``xhat = (x - mean) * rstd``,
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` over each slice,
``dgamma = sum(dy * xhat)`` and ``dbeta = sum(dy)`` over everything but the
parameter's own axes. RMS norm is the same without centering: ``mean = 0``,
the variance the mean square, and no ``mean(g)`` term in ``dx``.
"""

from __future__ import annotations

import numpy as np


def _slices(x, op, axis, groups):
    """``x`` rearranged as ``(slices..., elements)`` pieces.

    Returns ``(rows, reduce_axes, param_view, param_sum_axes, restore)``
    where ``rows`` holds the data with the reduced axes as ``reduce_axes``,
    ``param_view`` reshapes a parameter to broadcast against ``rows`` and
    ``restore`` maps an array shaped like ``rows`` back to ``x``'s layout.
    """
    ndim = x.ndim
    if op in ("group", "batch"):
        moved = np.moveaxis(x, axis, -1)
        c = x.shape[axis]
        if op == "group":
            rows = moved.reshape(x.shape[0], -1, groups, c // groups)
            reduce_axes, param_sum_axes = (1, 3), (0, 1)
            param_view = (1, 1, groups, c // groups)
        else:
            rows = moved.reshape(-1, c)
            reduce_axes, param_sum_axes = (0,), (0,)
            param_view = (1, c)

        def restore(t):
            return np.moveaxis(t.reshape(moved.shape), -1, axis)

        return rows, reduce_axes, param_view, param_sum_axes, restore
    axes = list(axis)
    others = [i for i in range(ndim) if i not in axes]
    perm = others + axes
    moved = np.transpose(x, perm)
    features = int(np.prod([x.shape[i] for i in axes]))
    rows = moved.reshape(-1, features)
    inverse = np.argsort(perm)

    def restore(t):
        return np.transpose(t.reshape(moved.shape), inverse)

    return rows, (1,), (1, features), (0,), restore


def normalize_and_vjp(x, dy, op, axis, *, groups=None, gamma=None, beta=None, epsilon=1e-3):
    """Float64 ``y``, ``dx``, ``dgamma``, ``dbeta``, ``mean`` and ``variance``.

    Args:
        x, dy: arrays of the same shape (any float dtype; used as float64).
        op: ``"group"`` (``axis`` the channel axis, ``groups`` resolved),
            ``"batch"`` (``axis`` the channel axis), ``"layer"`` or ``"rms"``
            (``axis`` a list of feature axes).
        gamma, beta: None or arrays of the parameter shape.
    """
    x = np.asarray(x, np.float64)
    rows, red, pview, psum, restore = _slices(x, op, axis, groups)
    d_rows = _slices(np.asarray(dy, np.float64), op, axis, groups)[0]
    mean = np.zeros_like(rows[..., :1]) if op == "rms" else rows.mean(red, keepdims=True)
    var = ((rows - mean) ** 2).mean(red, keepdims=True)
    rstd = 1.0 / np.sqrt(var + epsilon)
    xhat = (rows - mean) * rstd
    g_param = np.ones(pview) if gamma is None else np.asarray(gamma, np.float64).reshape(pview)
    b_param = np.zeros(pview) if beta is None else np.asarray(beta, np.float64).reshape(pview)
    y = xhat * g_param + b_param
    g = d_rows * g_param
    centering = 0.0 if op == "rms" else g.mean(red, keepdims=True)
    dx = rstd * (g - centering - xhat * (g * xhat).mean(red, keepdims=True))
    pshape = None if gamma is None and beta is None else np.shape(gamma if gamma is not None else beta)
    dgamma = (d_rows * xhat).sum(psum).reshape(pshape) if gamma is not None else None
    dbeta = d_rows.sum(psum).reshape(pshape) if beta is not None else None
    return {
        "y": restore(y),
        "dx": restore(dx),
        "dgamma": dgamma,
        "dbeta": dbeta,
        "mean": mean.reshape(-1),
        "variance": var.reshape(-1),
    }
