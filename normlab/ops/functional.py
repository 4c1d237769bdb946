"""Functional normalization ops: each chooses axes and grouping, then calls
:func:`~normlab.ops.moments.moments` and :func:`~normlab.ops.normalize.normalize`.

All ops take channels-last or channels-first data alike (``axis``), any
rank, float16/bfloat16/float32/float64 inputs, and return the input's dtype.
"""

from __future__ import annotations

from keras import ops

from normlab import backends
from normlab.ops.axes import canonicalize_axes, complement, known_dims
from normlab.ops.moments import shifted_moments
from normlab.ops.normalize import normalize
from normlab.ops.validate import check_epsilon, check_groups, error_message, require_spatial, resolve_groups


def _dims(x) -> list:
    """The shape of ``x`` with unknown (graph-mode) sizes as scalar tensors."""
    static = list(x.shape)
    if all(d is not None for d in static):
        return static
    dynamic = ops.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def _broadcast(param, ndim: int, axes, feature_shape):
    """Reshapes a parameter of ``feature_shape`` so it broadcasts on ``axes``."""
    if param is None:
        return None
    param = ops.convert_to_tensor(param)
    if len(param.shape) == ndim:
        return param
    shape = [1] * ndim
    for a, d in zip(axes, feature_shape):
        shape[a] = d
    return ops.reshape(param, shape)


def _check_param(name: str, param, expected_shape) -> None:
    if param is None:
        return
    shape = tuple(param.shape)
    if shape != tuple(expected_shape) and len(shape) != 0:
        raise ValueError(
            error_message(
                name,
                f"a tensor of shape {tuple(expected_shape)} (the normalized feature dimensions)",
                f"{name}.shape={shape}",
                f"Pass one value per feature, e.g. ones of shape {tuple(expected_shape)}.",
            )
        )


def group_norm(x, groups: int = 32, axis: int = -1, *, gamma=None, beta=None, epsilon: float = 1e-3):
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
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
        >>> y = ops.convert_to_numpy(group_norm(x, groups=3))
        >>> g = y.reshape(2, 16, 3, 2)                 # samples x positions x groups x channels
        >>> bool(np.allclose(g.mean(axis=(1, 3)), 0, atol=1e-5))
        True

    Reference:
        Wu & He, "Group Normalization", ECCV 2018. https://arxiv.org/abs/1803.08494
    """
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    (a,) = canonicalize_axes(axis, ndim)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    g = resolve_groups(check_groups(groups), channels, axis)
    if g == channels:  # one value per group without a spatial axis: all zeros
        require_spatial(x.shape, "instance normalization (one group per channel)", argument="x")
    epsilon = check_epsilon(epsilon)
    _check_param("gamma", gamma, (channels,))
    _check_param("beta", beta, (channels,))

    hook = backends.fast_path("group_norm", epsilon=epsilon)
    if hook is not None:
        y = hook(x, groups=g, axis=a, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is not None:
            return y

    if g == channels:  # one group per channel: no reshape needed
        shift, mean, var = shifted_moments(x, complement([a], ndim, keep_batch=True))
        return normalize(
            x, mean, var, shift=shift, epsilon=epsilon,
            gamma=_broadcast(gamma, ndim, [a], [channels]),
            beta=_broadcast(beta, ndim, [a], [channels]),
        )
    dims = _dims(x)
    grouped = dims[:a] + [g, channels // g] + dims[a + 1:]
    xg = ops.reshape(x, grouped)
    shift, mean, var = shifted_moments(xg, complement([a], ndim + 1, keep_batch=True))
    param_axes, param_shape = [a, a + 1], [g, channels // g]
    y = normalize(
        xg, mean, var, shift=shift, epsilon=epsilon,
        gamma=_broadcast(gamma if gamma is None else ops.reshape(gamma, param_shape), ndim + 1, param_axes, param_shape),
        beta=_broadcast(beta if beta is None else ops.reshape(beta, param_shape), ndim + 1, param_axes, param_shape),
    )
    return ops.reshape(y, dims)


def instance_norm(x, axis: int = -1, *, gamma=None, beta=None, epsilon: float = 1e-3):
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


def layer_norm(x, axis=-1, *, gamma=None, beta=None, epsilon: float = 1e-3):
    """Layer normalization: statistics per sample over the given feature axes.

    Formula: for each sample, ``mean`` and ``var`` over ``axis``;
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` with ``gamma`` and
    ``beta`` of the shape of ``x`` at ``axis`` (elementwise affine).

    Args:
        x: input of rank >= 2, batch first.
        axis: an int or a list of ints, never the batch axis. Default -1.
        gamma: optional scale of shape ``[x.shape[a] for a in axis]``. Default None.
        beta: optional offset of the same shape. Default None.
        epsilon: added to the variance. Default 1e-3.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> [round(float(v), 4) for v in ops.convert_to_numpy(layer_norm(x, epsilon=0.0))[0]]
        [-1.2247, 0.0, 1.2247]

    Reference:
        Ba, Kiros & Hinton, "Layer Normalization", 2016. https://arxiv.org/abs/1607.06450
    """
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    axes = canonicalize_axes(axis, ndim)
    feature_shape = known_dims(x.shape, axes, axis=axis)
    epsilon = check_epsilon(epsilon)
    _check_param("gamma", gamma, feature_shape)
    _check_param("beta", beta, feature_shape)

    hook = backends.fast_path("layer_norm", epsilon=epsilon)
    if hook is not None:
        y = hook(x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is not None:
            return y

    shift, mean, var = shifted_moments(x, axes)
    return normalize(
        x, mean, var, shift=shift, epsilon=epsilon,
        gamma=_broadcast(gamma, ndim, axes, feature_shape),
        beta=_broadcast(beta, ndim, axes, feature_shape),
    )


def batch_norm(
    x,
    mean=None,
    variance=None,
    *,
    axis: int = -1,
    gamma=None,
    beta=None,
    epsilon: float = 1e-3,
    training: bool = False,
    mask=None,
    return_stats: bool = False,
    replica_sum=None,
):
    """Batch normalization: statistics per channel over the batch and all other axes.

    Formula: with ``training=True``, ``mean`` and ``var`` per channel over
    every axis but ``axis`` (the batch statistics); with ``training=False``,
    the given ``mean`` and ``variance`` (e.g. moving averages). Then
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``.

    Args:
        x: input of rank >= 2, batch first.
        mean: per-channel mean of shape ``(C,)``; required when ``training=False``.
        variance: per-channel variance of shape ``(C,)``; required when ``training=False``.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale of shape ``(C,)``. Default None.
        beta: optional per-channel offset of shape ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        training: use batch statistics (True) or the given ones (False). Default False.
        mask: optional tensor broadcastable to ``x``; masked-out elements do
            not count toward the batch statistics. Default None.
        return_stats: also return the statistics used, as ``(y, mean, variance)``
            with shape ``(C,)`` (the biased batch variance when training). Default False.
        replica_sum: optional callable that sums a tensor over all replicas
            (:func:`normlab.distributed.replica_sum`); with ``training=True``
            the batch statistics are then those of the global batch (every
            replica's ``x``), and the backend fast path is not used. Default
            None (this call's ``x`` only).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0, 10.0], [2.0, 30.0]], "float32")
        >>> y, mean, var = batch_norm(x, training=True, epsilon=0.0, return_stats=True)
        >>> ops.convert_to_numpy(mean).tolist(), ops.convert_to_numpy(var).tolist()
        ([1.0, 20.0], [1.0, 100.0])
        >>> ops.convert_to_numpy(y).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]

    Reference:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015.
        https://arxiv.org/abs/1502.03167
    """
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    (a,) = canonicalize_axes(axis, ndim)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    epsilon = check_epsilon(epsilon)
    for name, param in (("gamma", gamma), ("beta", beta), ("mean", mean), ("variance", variance)):
        _check_param(name, param, (channels,))
    reduce_axes = complement([a], ndim)

    if training:
        # Fast paths reduce over this call's x only: never with a cross-replica sum.
        hook = backends.fast_path("batch_norm_train", epsilon=epsilon) if mask is None and replica_sum is None else None
        result = None
        if hook is not None:
            result = hook(x, axis=a, gamma=gamma, beta=beta, epsilon=epsilon)
        if result is None:
            shift, mean, variance = shifted_moments(x, reduce_axes, mask=mask, replica_sum=replica_sum)
            y = normalize(
                x, mean, variance, shift=shift, epsilon=epsilon,
                gamma=_broadcast(gamma, ndim, [a], [channels]),
                beta=_broadcast(beta, ndim, [a], [channels]),
            )
            mean, variance = ops.reshape(shift + mean, (channels,)), ops.reshape(variance, (channels,))
        else:
            y, mean, variance = result
    else:
        if mean is None or variance is None:
            raise ValueError(
                error_message(
                    "mean" if mean is None else "variance",
                    "per-channel statistics when training=False",
                    f"mean={None if mean is None else '<tensor>'}, "
                    f"variance={None if variance is None else '<tensor>'}, training=False",
                    "Pass the moving mean and variance, or training=True to use batch statistics.",
                )
            )
        y = normalize(
            x,
            _broadcast(mean, ndim, [a], [channels]),
            _broadcast(variance, ndim, [a], [channels]),
            epsilon=epsilon,
            gamma=_broadcast(gamma, ndim, [a], [channels]),
            beta=_broadcast(beta, ndim, [a], [channels]),
        )
    return (y, mean, variance) if return_stats else y
