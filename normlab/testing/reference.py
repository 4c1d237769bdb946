"""Float64 NumPy references: the oracles every normlab op is tested against.

Each function is written the plain way, straight from the paper's formula,
in float64, with no attempt at speed. They accept and return NumPy arrays.
"""

from __future__ import annotations

import numpy as np


def _f64(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def _affine(y, gamma, beta, shape):
    if gamma is not None:
        y = y * _f64(gamma).reshape(shape)
    if beta is not None:
        y = y + _f64(beta).reshape(shape)
    return y


def _channel_shape(ndim: int, axis: int, channels: int):
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def moments(x, axes, mask=None):
    """Mean and biased variance over ``axes`` (kept as size-1 dims), float64."""
    x = _f64(x)
    axes = tuple(axes)
    w = np.ones_like(x) if mask is None else np.broadcast_to(_f64(mask), x.shape)
    count = np.maximum(w.sum(axis=axes, keepdims=True), 1.0)
    mean = (w * x).sum(axis=axes, keepdims=True) / count
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / count
    return mean, var


def group_norm(x, groups, axis=-1, gamma=None, beta=None, epsilon=1e-3):
    """Group normalization (Wu & He 2018), channels on ``axis``; groups=-1 is instance norm."""
    x = _f64(x)
    axis = axis % x.ndim
    channels = x.shape[axis]
    groups = channels if groups == -1 else groups
    moved = np.moveaxis(x, axis, -1)  # (N, ..., C)
    grouped = moved.reshape(moved.shape[:-1] + (groups, channels // groups))
    reduce = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean, var = moments(grouped, reduce)
    y = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(moved.shape)
    y = np.moveaxis(y, -1, axis)
    return _affine(y, gamma, beta, _channel_shape(x.ndim, axis, channels))


def instance_norm(x, axis=-1, gamma=None, beta=None, epsilon=1e-3):
    """Instance normalization (Ulyanov et al. 2016): per sample and channel."""
    x = _f64(x)
    axis = axis % x.ndim
    reduce = [a for a in range(1, x.ndim) if a != axis]
    mean, var = moments(x, reduce)
    y = (x - mean) / np.sqrt(var + epsilon)
    return _affine(y, gamma, beta, _channel_shape(x.ndim, axis, x.shape[axis]))


def layer_norm(x, axis=-1, gamma=None, beta=None, epsilon=1e-3):
    """Layer normalization (Ba et al. 2016) over ``axis`` (int or list)."""
    x = _f64(x)
    axes = sorted(a % x.ndim for a in np.atleast_1d(axis))
    mean, var = moments(x, axes)
    y = (x - mean) / np.sqrt(var + epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    return _affine(y, gamma, beta, shape)


def batch_norm(x, axis=-1, gamma=None, beta=None, epsilon=1e-3, mean=None, variance=None, mask=None):
    """Batch normalization (Ioffe & Szegedy 2015).

    With ``mean``/``variance`` None, uses batch statistics (training form) and
    returns ``(y, batch_mean, batch_variance)``; otherwise uses the given
    statistics (inference form) and returns ``(y, mean, variance)``.
    """
    x = _f64(x)
    axis = axis % x.ndim
    shape = _channel_shape(x.ndim, axis, x.shape[axis])
    if mean is None:
        reduce = [a for a in range(x.ndim) if a != axis]
        m, v = moments(x, reduce, mask)
    else:
        m, v = _f64(mean).reshape(shape), _f64(variance).reshape(shape)
    y = _affine((x - m) / np.sqrt(v + epsilon), gamma, beta, shape)
    return y, m.reshape(-1), v.reshape(-1)
