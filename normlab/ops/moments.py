"""The statistics kernel: mean and variance over given axes, for every norm.

Numerics policy (the one place it is decided):

* Statistics are computed in float32 at least: float16 and bfloat16 inputs
  are upcast before any reduction, float64 stays float64.
* Variance is two-pass, ``mean((x - mean)**2)``, never ``E[x^2] - E[x]^2``:
  it stays exact for inputs with a large offset (1e6 + small noise) where a
  one-pass formula cancels catastrophically and can even go negative.
* Variance is the biased (population) variance, as in Keras and the papers,
  and is clamped at zero so that ``rsqrt(var + epsilon)`` is always finite.
* An optional ``mask`` (broadcastable to ``x``, 1 = counts, 0 = ignored)
  weights each element; a slice with no unmasked element gets mean 0 and
  variance 0.
"""

from __future__ import annotations

from typing import Sequence

from keras import ops
from keras.src.backend import standardize_dtype


def stats_dtype(dtype) -> str:
    """The dtype statistics are computed in for inputs of ``dtype``."""
    return "float64" if standardize_dtype(dtype) == "float64" else "float32"


def moments(x, axes: Sequence[int], *, mask=None, keepdims: bool = True):
    """Mean and biased variance of ``x`` over ``axes``, in float32 at least.

    Formula: ``mean = sum(w * x) / sum(w)``, ``var = sum(w * (x - mean)^2) / sum(w)``
    with ``w = mask`` (or 1), reduced over ``axes``.

    Args:
        x: input tensor of any float dtype.
        axes: axes to reduce over (non-negative ints).
        mask: optional tensor broadcastable to ``x``; zero entries are ignored.
        keepdims: keep the reduced axes as size-1 dimensions (default True),
            so the results broadcast against ``x``.

    Returns:
        ``(mean, variance)`` in :func:`stats_dtype` of ``x``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1e6 + 1.0, 1e6 - 1.0]], "float32")
        >>> mean, var = moments(x, axes=[1])
        >>> float(ops.convert_to_numpy(var)[0, 0])
        1.0
    """
    axes = list(axes)
    dtype = stats_dtype(x.dtype)
    x = ops.cast(x, dtype)
    if mask is None:
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    else:
        weight = ops.cast(mask, dtype)
        weight = ops.broadcast_to(weight, ops.shape(x))
        count = ops.maximum(ops.sum(weight, axis=axes, keepdims=True), 1.0)
        mean = ops.sum(x * weight, axis=axes, keepdims=True) / count
        variance = ops.sum(weight * ops.square(x - mean), axis=axes, keepdims=True) / count
    variance = ops.maximum(variance, 0.0)
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return mean, variance
