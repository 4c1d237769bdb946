"""Root mean square normalization (Zhang & Sennrich, 2019): no centering."""

from __future__ import annotations

from keras import ops

from normlab.ops.axes import canonicalize_axes, feature_param, known_dims
from normlab.ops.moments import mean_square
from normlab.ops.normalize import normalize
from normlab.ops.validate import check_epsilon, check_param
from normlab.types import Axis, Tensor


def rms_norm(
    x: Tensor, axis: Axis = -1, *, gamma: Tensor | None = None, beta: Tensor | None = None, epsilon: float = 1e-6
) -> Tensor:
    """Root mean square normalization: rescales by the RMS over ``axis``, no centering.

    Formula: ``y = x / sqrt(mean(x^2 over axis) + epsilon) * gamma + beta``,
    with ``gamma`` and ``beta`` of the shape of ``x`` at ``axis``. Equal to
    ``keras.ops.rms_normalization(x, scale=gamma, axis=axis, epsilon=epsilon)``.

    Args:
        x: input of rank >= 2, batch first.
        axis: an int or a list of ints, never the batch axis. Default -1.
        gamma: optional scale of shape ``[x.shape[a] for a in axis]``. Default None.
        beta: optional offset of the same shape (not in the paper). Default None.
        epsilon: added to the mean square. Default 1e-6 (as Keras).

    Example:
        >>> import numpy as np
        >>> x = np.array([[3.0, -4.0]], "float32")           # RMS = sqrt(12.5)
        >>> ops.convert_to_numpy(rms_norm(x, epsilon=0.0)).astype("float64").round(4).tolist()
        [[0.8485, -1.1314]]

    Reference:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
        https://arxiv.org/abs/1910.07467
    """
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    axes = canonicalize_axes(axis, ndim)
    feature_shape = known_dims(x.shape, axes, axis=axis)
    epsilon = check_epsilon(epsilon)
    check_param("gamma", gamma, feature_shape)
    check_param("beta", beta, feature_shape)
    return normalize(
        x, 0.0, mean_square(x, axes), epsilon=epsilon,
        gamma=feature_param(gamma, ndim, axes, feature_shape),
        beta=feature_param(beta, ndim, axes, feature_shape),
    )
