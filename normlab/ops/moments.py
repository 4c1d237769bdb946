"""The statistics kernel: mean and variance over given axes, for every norm.

Numerics policy (the one place it is decided):

* Statistics are computed in float32 at least: float16 and bfloat16 inputs
  are upcast before any reduction, float64 stays float64.
* Variance is two-pass and shifted: a first pass takes a per-slice shift
  ``s = mean(x)`` (a constant for autodiff), a second pass the mean ``c``
  and variance of the residuals ``d = x - s``; ``var = mean(d**2) - c**2``.
  Never ``E[x^2] - E[x]^2``, which cancels catastrophically for inputs with
  a large offset (1e6 + small noise) and can even go negative. The apply
  step subtracts ``s`` then ``c`` (see :func:`shifted_moments`), so the
  output stays exact even where the mean itself cannot be held in the
  input's dtype (float32 near 1e6 holds it only to 1/16).
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


def shifted_moments(x, axes: Sequence[int], *, mask=None):
    """Statistics of ``x`` relative to a per-slice shift, for the exact apply step.

    Returns ``(shift, mean, variance)``, all with the reduced axes kept:
    ``shift`` is a first-pass mean (no gradient flows through it), ``mean``
    and ``variance`` are those of ``x - shift``, so the mean of ``x`` is
    ``shift + mean``. Pass all three to
    :func:`~normlab.ops.normalize.normalize` (``shift=shift``); the result
    does not depend on the shift, only its rounding does, which is why it
    is kept apart. Arguments as in :func:`moments`.
    """
    axes = list(axes)
    dtype = stats_dtype(x.dtype)
    x = ops.cast(x, dtype)
    if mask is None:
        def average(v):
            return ops.mean(v, axis=axes, keepdims=True)
    else:
        weight = ops.broadcast_to(ops.cast(mask, dtype), ops.shape(x))
        count = ops.maximum(ops.sum(weight, axis=axes, keepdims=True), 1.0)

        def average(v):
            return ops.sum(v * weight, axis=axes, keepdims=True) / count

    shift = ops.stop_gradient(average(x))
    residual = x - shift
    mean = average(residual)
    variance = ops.maximum(average(ops.square(residual)) - ops.square(mean), 0.0)
    return shift, mean, variance


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
    shift, mean, variance = shifted_moments(x, axes, mask=mask)
    mean = shift + mean
    if not keepdims:
        mean = ops.squeeze(mean, axis=list(axes))
        variance = ops.squeeze(variance, axis=list(axes))
    return mean, variance
