"""Layer normalization: per-sample statistics over the given feature axes."""

from __future__ import annotations

from keras import ops

from normlab import backends
from normlab.ops.axes import canonicalize_axes, feature_param, float_tensor, known_dims
from normlab.ops.moments import shifted_moments, stats_dtype, widened
from normlab.ops.normalize import normalize
from normlab.ops.params import check_param
from normlab.ops.validate import check_epsilon
from normlab.types import Axis, Tensor


def feature_axes_arguments(
    x: Tensor, axis: Axis, gamma: Tensor | None, beta: Tensor | None, epsilon: float
) -> tuple[Tensor, list[int], list[int], float, Tensor | None, Tensor | None]:
    """The validated arguments of a norm over feature axes with an elementwise
    affine (layer norm, RMS norm): ``(x, axes, feature_shape, epsilon, gamma, beta)``."""
    x = float_tensor(x)
    axes = canonicalize_axes(axis, len(x.shape))
    if gamma is None and beta is None:  # nothing to fit: the axes may have any size, even unknown
        feature_shape = [x.shape[a] for a in axes]
    else:
        feature_shape = known_dims(x.shape, axes, axis=axis)
    gamma = check_param("gamma", gamma, feature_shape, stats_dtype(x.dtype))
    beta = check_param("beta", beta, feature_shape, stats_dtype(x.dtype))
    return x, axes, feature_shape, check_epsilon(epsilon), gamma, beta


def layer_norm(
    x: Tensor, axis: Axis = -1, *, gamma: Tensor | None = None, beta: Tensor | None = None, epsilon: float = 1e-3
) -> Tensor:
    """Layer normalization: statistics per sample over the given feature axes.

    Formula: for each sample, ``mean`` and ``var`` over ``axis``;
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` with ``gamma`` and
    ``beta`` of the shape of ``x`` at ``axis`` (elementwise affine).

    Args:
        x: input of rank >= 2, batch first.
        axis: an int or a list of ints, never the batch axis. Default -1.
        gamma: optional scale of shape ``[x.shape[a] for a in sorted(axis)]`` (axes in ascending order). Default None.
        beta: optional offset of the same shape. Default None.
        epsilon: added to the variance. Default 1e-3.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import layer_norm
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> [round(float(v), 4) for v in ops.convert_to_numpy(layer_norm(x, epsilon=0.0))[0]]
        [-1.2247, 0.0, 1.2247]

    Reference:
        Ba, Kiros & Hinton, "Layer Normalization", 2016. https://arxiv.org/abs/1607.06450
    """
    x, axes, feature_shape, epsilon, gamma, beta = feature_axes_arguments(x, axis, gamma, beta, epsilon)
    ndim = len(x.shape)

    hook = backends.fast_path("layer_norm", epsilon=epsilon)
    if hook is not None:
        y = hook(x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is not None:
            return y

    xw = widened(x)
    shift, mean, var = shifted_moments(xw, axes)
    return ops.cast(normalize(
        xw, mean, var, shift=shift, epsilon=epsilon,
        gamma=feature_param(gamma, ndim, axes, feature_shape),
        beta=feature_param(beta, ndim, axes, feature_shape),
    ), x.dtype)
