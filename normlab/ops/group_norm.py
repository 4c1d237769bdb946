"""Group and instance normalization: per-sample statistics over groups of channels and space."""

from __future__ import annotations

from keras import ops

from normlab import backends
from normlab.ops.axes import (
    along_short_rows,
    complement,
    feature_param,
    float_tensor,
    grouped_dims,
    known_dims,
    the_channel_axis,
)
from normlab.ops.moments import shifted_moments, stats_dtype, widened
from normlab.ops.normalize import normalize
from normlab.ops.params import check_param
from normlab.ops.validate import check_epsilon, check_groups, require_spatial, resolve_groups
from normlab.types import Tensor


def group_norm(
    x: Tensor,
    groups: int = 32,
    axis: int = -1,
    *,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    epsilon: float = 1e-3,
) -> Tensor:
    """Group normalization: statistics per sample over each group of channels.

    Formula: split the ``C`` channels on ``axis`` into ``groups`` groups of
    ``C // groups``; for each sample and group, ``mean`` and ``var`` over
    the group's channels and all other non-batch axes;
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` with per-channel
    ``gamma`` and ``beta``.

    Args:
        x: input of rank >= 2, batch first.
        groups: number of groups, a divisor of the channel count; -1 means one
            group per channel (instance normalization). Default 32.
        axis: the channel axis. Default -1 (channels-last); 1 for channels-first.
        gamma: optional per-channel scale of shape ``(C,)``. Default None.
        beta: optional per-channel offset of shape ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import group_norm
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
        >>> y = ops.convert_to_numpy(group_norm(x, groups=3))
        >>> g = y.reshape(2, 16, 3, 2)                 # samples x positions x groups x channels
        >>> bool(np.allclose(g.mean(axis=(1, 3)), 0, atol=1e-5))
        True

    Reference:
        Wu & He, "Group Normalization", ECCV 2018. https://arxiv.org/abs/1803.08494
    """
    x = float_tensor(x)
    ndim = len(x.shape)
    a = the_channel_axis(axis, ndim, "group normalization")
    (channels,) = known_dims(x.shape, [a], axis=axis, reason="the groups divide it (and gamma and beta match it)")
    g = resolve_groups(check_groups(groups), channels, axis)
    if g == channels:  # one value per group without a spatial axis: all zeros
        require_spatial(x.shape, "instance normalization (one group per channel)", argument="x")
    epsilon = check_epsilon(epsilon)
    gamma = check_param("gamma", gamma, (channels,), stats_dtype(x.dtype))
    beta = check_param("beta", beta, (channels,), stats_dtype(x.dtype))

    hook = backends.fast_path("group_norm", epsilon=epsilon)
    if hook is not None:
        y = hook(x, groups=g, axis=a, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is not None:
            return y

    out_dtype, x = x.dtype, widened(x)
    if g == channels:  # one group per channel: no reshape needed
        shift, mean, var = shifted_moments(x, complement([a], ndim, keep_batch=True))
        return ops.cast(normalize(
            x, mean, var, shift=shift, epsilon=epsilon,
            gamma=feature_param(gamma, ndim, [a], [channels]),
            beta=feature_param(beta, ndim, [a], [channels]),
        ), out_dtype)
    shape, grouped = grouped_dims(x, a, g, channels)
    xg = ops.reshape(x, grouped)
    reduced = complement([a], ndim + 1, keep_batch=True)
    # (channels-last: each group's statistics spread over its channels, see along_short_rows)
    shift, mean, var = (along_short_rows(t, xg, reduced) for t in shifted_moments(xg, reduced))
    param_axes, param_shape = [a, a + 1], [g, channels // g]
    y = normalize(
        xg, mean, var, shift=shift, epsilon=epsilon,
        gamma=feature_param(
            gamma if gamma is None else ops.reshape(gamma, param_shape), ndim + 1, param_axes, param_shape
        ),
        beta=feature_param(
            beta if beta is None else ops.reshape(beta, param_shape), ndim + 1, param_axes, param_shape
        ),
    )
    return ops.cast(ops.reshape(y, shape), out_dtype)


def instance_norm(
    x: Tensor, axis: int = -1, *, gamma: Tensor | None = None, beta: Tensor | None = None, epsilon: float = 1e-3
) -> Tensor:
    """Instance normalization: statistics per sample and channel over all other axes.

    Formula: for each sample and channel, ``mean`` and ``var`` over the
    spatial axes; ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``.
    Equal to :func:`group_norm` with ``groups=-1``.

    Args:
        x: input of rank >= 3, batch first.
        axis: the channel axis. Default -1; 1 for channels-first.
        gamma: optional per-channel scale of shape ``(C,)``. Default None.
        beta: optional per-channel offset of shape ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import group_norm, instance_norm
        >>> x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype("float32")
        >>> a = ops.convert_to_numpy(instance_norm(x, axis=1))
        >>> b = ops.convert_to_numpy(group_norm(x, groups=3, axis=1))
        >>> bool(np.allclose(a, b, atol=1e-6))
        True

    Reference:
        Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing
        Ingredient for Fast Stylization", 2016. https://arxiv.org/abs/1607.08022
    """
    return group_norm(x, groups=-1, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon)
