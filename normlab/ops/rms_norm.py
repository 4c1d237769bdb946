"""Root mean square normalization (Zhang & Sennrich, 2019): no centering."""

from __future__ import annotations

from keras import ops

from normlab import backends
from normlab.ops.axes import feature_param
from normlab.ops.layer_norm import feature_axes_arguments
from normlab.ops.moments import mean_square, widened
from normlab.ops.normalize import normalize
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
        gamma: optional scale of shape ``[x.shape[a] for a in sorted(axis)]`` (axes in ascending order). Default None.
        beta: optional offset of the same shape (not in the paper). Default None.
        epsilon: added to the mean square. Default 1e-6 (as Keras).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import rms_norm
        >>> x = np.array([[3.0, -4.0]], "float32")           # RMS = sqrt(12.5)
        >>> ops.convert_to_numpy(rms_norm(x, epsilon=0.0)).astype("float64").round(4).tolist()
        [[0.8485, -1.1314]]

    Reference:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
        https://arxiv.org/abs/1910.07467
    """
    x, axes, feature_shape, epsilon, gamma, beta = feature_axes_arguments(x, axis, gamma, beta, epsilon)
    hook = backends.fast_path("rms_norm", epsilon=epsilon)
    if hook is not None:
        y = hook(x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is not None:
            return y
    ndim = len(x.shape)
    xw = widened(x)
    return ops.cast(normalize(
        xw, 0.0, mean_square(xw, axes), epsilon=epsilon,
        gamma=feature_param(gamma, ndim, axes, feature_shape),
        beta=feature_param(beta, ndim, axes, feature_shape),
    ), x.dtype)
