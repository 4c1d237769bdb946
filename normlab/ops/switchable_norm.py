"""Switchable normalization (Luo et al., 2018): a learned mix of instance, layer and batch statistics."""

from __future__ import annotations

from typing import Literal, overload

from keras import ops

from normlab.ops.axes import channel_axis, complement, float_tensor, per_channel
from normlab.ops.moments import shifted_moments, stats_dtype, widened
from normlab.ops.normalize import check_variance, normalize
from normlab.ops.params import check_param
from normlab.ops.validate import check_bools, check_epsilon, check_replica_sum, error_message, require_spatial
from normlab.types import ReplicaSum, Tensor


@overload
def switchable_norm(
    x: Tensor, mean_weights: Tensor, variance_weights: Tensor, moving_mean: Tensor | None = ...,
    moving_variance: Tensor | None = ..., *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., training: bool = ..., return_stats: Literal[False] = ...,
    replica_sum: ReplicaSum | None = ...,
) -> Tensor: ...
@overload
def switchable_norm(
    x: Tensor, mean_weights: Tensor, variance_weights: Tensor, moving_mean: Tensor | None = ...,
    moving_variance: Tensor | None = ..., *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., training: bool = ..., return_stats: Literal[True], replica_sum: ReplicaSum | None = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def switchable_norm(
    x: Tensor, mean_weights: Tensor, variance_weights: Tensor, moving_mean: Tensor | None = ...,
    moving_variance: Tensor | None = ..., *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., training: bool = ..., return_stats: bool, replica_sum: ReplicaSum | None = ...,
) -> Tensor | tuple[Tensor, Tensor, Tensor]: ...
def switchable_norm(
    x: Tensor, mean_weights: Tensor, variance_weights: Tensor, moving_mean: Tensor | None = None,
    moving_variance: Tensor | None = None, *, axis: int = -1, gamma: Tensor | None = None,
    beta: Tensor | None = None, epsilon: float = 1e-3, training: bool = False, return_stats: bool = False,
    replica_sum: ReplicaSum | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Switchable normalization: a learned mix of instance, layer and batch statistics.

    Formula: with ``w = softmax(mean_weights)`` and ``w' = softmax(variance_weights)``
    (order: instance, layer, batch), ``mean = w_in mean_in + w_ln mean_ln + w_bn mean_bn``
    and ``var = w'_in var_in + w'_ln var_ln + w'_bn var_bn``;
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``. Instance
    statistics are per sample and channel over the spatial axes, layer
    statistics per sample over all non-batch axes, and batch statistics per
    channel over the batch and spatial axes (``training=True``) or the given
    moving ones (``training=False``). All variances are biased.

    Args:
        x: input of rank >= 3, batch first.
        mean_weights: mixing logits for the means, shape ``(3,)``.
        variance_weights: mixing logits for the variances, shape ``(3,)``.
        moving_mean: per-channel mean ``(C,)``, required when ``training=False``. Default None.
        moving_variance: per-channel variance ``(C,)``, required when ``training=False``. Default None.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the mixed variance. Default 1e-3.
        training: batch statistics from ``x`` (True) or the moving ones (False). Default False.
        return_stats: also return the batch statistics used, ``(y, mean_bn, var_bn)``
            with shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            with ``training=True``, the batch statistics are the global
            batch's; instance and layer statistics are per sample anyway.
            Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import instance_norm, switchable_norm
        >>> from keras import ops
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
        >>> only_in = np.array([30.0, 0.0, 0.0], "float32")      # softmax ~ one-hot
        >>> y = switchable_norm(x, only_in, only_in, training=True)
        >>> bool(np.allclose(ops.convert_to_numpy(y), ops.convert_to_numpy(instance_norm(x)), atol=1e-5))
        True

    Reference:
        Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via
        Switchable Normalization", ICLR 2019. https://arxiv.org/abs/1806.10779
    """
    x = float_tensor(x)
    training, return_stats = check_bools(training=training, return_stats=return_stats)
    require_spatial(x.shape, "switchable normalization", argument="x")
    ndim, a, channels = channel_axis(x, axis)
    epsilon = check_epsilon(epsilon)
    check_replica_sum(replica_sum)
    mean_weights, variance_weights = (
        check_param(name, param, (3,), stats_dtype(x.dtype), meaning="mixing logits of the instance, layer "
                    "and batch statistics", per="statistic mixed", required=True) for name, param in (
            ("mean_weights", mean_weights), ("variance_weights", variance_weights)))
    check_variance(moving_variance, "moving_variance")  # (a host value, before it becomes a tensor)
    gamma, beta, moving_mean, moving_variance = (
        check_param(name, param, (channels,), stats_dtype(x.dtype)) for name, param in (
            ("gamma", gamma), ("beta", beta), ("moving_mean", moving_mean), ("moving_variance", moving_variance)))
    # Every mean is taken relative to one shift per sample and channel (an element
    # of the instance slice), so their mixture stays exact at large offsets: the
    # layer and batch shifts differ from it by an exact subtraction near the offset.
    out_dtype, x = x.dtype, widened(x)
    shift, mean_in, var_in = shifted_moments(x, complement([a], ndim, keep_batch=True))
    shift_ln, mean_ln, var_ln = shifted_moments(x, complement([], ndim, keep_batch=True))
    mean_ln = (shift_ln - shift) + mean_ln
    dtype = mean_in.dtype
    if training:
        shift_bn, residual_mean_bn, var_bn = shifted_moments(x, complement([a], ndim), replica_sum=replica_sum)
        mean_bn = shift_bn + residual_mean_bn  # the statistic returned (rounded near the offset)
        relative_bn = (shift_bn - shift) + residual_mean_bn
    elif moving_mean is None or moving_variance is None:
        raise ValueError(
            error_message(
                "moving_mean" if moving_mean is None else "moving_variance",
                "per-channel batch statistics when training=False",
                f"moving_mean={None if moving_mean is None else '<tensor>'}, "
                f"moving_variance={None if moving_variance is None else '<tensor>'}, training=False",
                "Pass the moving mean and variance, or training=True to use batch statistics.",
            )
        )
    else:
        mean_bn = ops.cast(per_channel(moving_mean, ndim, a, channels), dtype)
        var_bn = ops.cast(per_channel(moving_variance, ndim, a, channels), dtype)
        relative_bn = mean_bn - shift
    wm = ops.softmax(ops.cast(ops.reshape(mean_weights, (3,)), dtype))
    wv = ops.softmax(ops.cast(ops.reshape(variance_weights, (3,)), dtype))
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * relative_bn
    variance = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = ops.cast(normalize(
        x, mean, variance, epsilon=epsilon, shift=shift,
        gamma=per_channel(gamma, ndim, a, channels),
        beta=per_channel(beta, ndim, a, channels),
    ), out_dtype)
    if not return_stats:
        return y
    return y, ops.reshape(mean_bn, (channels,)), ops.reshape(var_bn, (channels,))
