"""EvoNorm-B0 and EvoNorm-S0 (Liu et al., 2020): normalization and activation in one op."""

from __future__ import annotations

from typing import Literal, overload

from keras import ops

from normlab.ops.arith import maximum
from normlab.ops.axes import channel_axis, complement, feature_param, float_tensor, grouped_dims, per_channel
from normlab.ops.moments import moments, stats_dtype, widened
from normlab.ops.normalize import check_variance, normalize
from normlab.ops.params import check_param
from normlab.ops.validate import (
    check_bools,
    check_epsilon,
    check_groups,
    error_message,
    require_spatial,
    resolve_groups,
)
from normlab.types import ReplicaSum, Tensor

EVO_NORM_EPSILON_REASON = (
    "; EvoNorm divides the uncentered input by a standard deviation, so a constant "
    "slice would give inf or NaN with epsilon=0"
)


@overload
def evo_norm_b0(
    x: Tensor, v: Tensor | None = ..., moving_variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    return_stats: Literal[False] = ..., replica_sum: ReplicaSum | None = ...,
) -> Tensor: ...
@overload
def evo_norm_b0(
    x: Tensor, v: Tensor | None = ..., moving_variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    return_stats: Literal[True], replica_sum: ReplicaSum | None = ...,
) -> tuple[Tensor, Tensor]: ...
@overload
def evo_norm_b0(
    x: Tensor, v: Tensor | None = ..., moving_variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    return_stats: bool, replica_sum: ReplicaSum | None = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...
def evo_norm_b0(
    x: Tensor, v: Tensor | None = None, moving_variance: Tensor | None = None, *, axis: int = -1,
    gamma: Tensor | None = None, beta: Tensor | None = None, epsilon: float = 1e-3, training: bool = False,
    return_stats: bool = False, replica_sum: ReplicaSum | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """EvoNorm-B0: batch-dependent normalization-activation.

    Formula: ``y = x / max(sqrt(var_b + epsilon), v * x + sqrt(var_i + epsilon)) * gamma + beta``
    where ``var_b`` is the per-channel variance over the batch and spatial
    axes (``training=True``) or ``moving_variance`` (``training=False``), and
    ``var_i`` the per-sample, per-channel variance over the spatial axes.

    Args:
        x: input of rank >= 3, batch first.
        v: per-channel ``v`` of shape ``(C,)``. Default None (ones).
        moving_variance: per-channel variance ``(C,)``, required when ``training=False``. Default None.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to both variances, > 0. Default 1e-3 (as timm).
        training: use the batch variance (True) or ``moving_variance`` (False). Default False.
        return_stats: also return the variance used, shape ``(C,)``, as
            ``(y, variance)`` (the biased batch variance when training). Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            with ``training=True``, ``var_b`` is the global batch's. The
            per-sample ``var_i`` is unaffected. Default None.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import evo_norm_b0
        >>> x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype("float32")
        >>> y, var = evo_norm_b0(x, training=True, return_stats=True)
        >>> bool(np.allclose(ops.convert_to_numpy(var), x.var(axis=(0, 1, 2)), atol=1e-5))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """
    x = float_tensor(x)
    training, return_stats = check_bools(training=training, return_stats=return_stats)
    require_spatial(x.shape, "EvoNorm-B0", argument="x")
    ndim, a, channels = channel_axis(x, axis)
    epsilon = check_epsilon(epsilon, positive=True, reason=EVO_NORM_EPSILON_REASON)
    dtype = stats_dtype(x.dtype)
    check_variance(moving_variance, "moving_variance")  # (a host value, before it becomes a tensor)
    v, gamma, beta, moving_variance = (
        check_param(name, param, (channels,), dtype)
        for name, param in (("v", v), ("gamma", gamma), ("beta", beta), ("moving_variance", moving_variance)))
    xs = widened(x)
    if training:
        _, variance = moments(xs, complement([a], ndim), replica_sum=replica_sum)
    elif moving_variance is None:
        raise ValueError(
            error_message("moving_variance", "a per-channel variance when training=False",
                          "moving_variance=None, training=False",
                          "Pass the moving variance, or training=True to use the batch variance.")
        )
    else:
        variance = ops.cast(per_channel(moving_variance, ndim, a, channels), dtype)
    _, instance_var = moments(xs, complement([a], ndim, keep_batch=True))
    right = ops.sqrt(instance_var + epsilon)
    if v is not None:
        right = xs * ops.cast(per_channel(v, ndim, a, channels), dtype) + right
    else:
        right = xs + right
    y = xs / maximum(ops.sqrt(variance + epsilon), right)
    if gamma is not None:
        y = y * ops.cast(per_channel(gamma, ndim, a, channels), dtype)
    if beta is not None:
        y = y + ops.cast(per_channel(beta, ndim, a, channels), dtype)
    y = ops.cast(y, x.dtype)
    return (y, ops.reshape(variance, (channels,))) if return_stats else y


def evo_norm_s0(
    x: Tensor, v: Tensor | None = None, *, groups: int = 32, axis: int = -1, gamma: Tensor | None = None,
    beta: Tensor | None = None, epsilon: float = 1e-5,
) -> Tensor:
    """EvoNorm-S0: batch-independent normalization-activation with groups.

    Formula: ``y = x * sigmoid(v * x) / sqrt(var_g + epsilon) * gamma + beta``
    where ``var_g`` is the per-sample variance of ``x`` over each group of
    ``C // groups`` channels and all spatial axes (as in group normalization).

    Args:
        x: input of rank >= 2, batch first.
        v: per-channel ``v`` of shape ``(C,)``. Default None (ones).
        groups: number of groups, a divisor of ``C``; -1 for one per channel. Default 32.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the group variance, > 0. Default 1e-5 (as timm).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import evo_norm_s0
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
        >>> y = ops.convert_to_numpy(evo_norm_s0(x, groups=3, epsilon=1e-12))
        >>> std = x.reshape(2, 16, 3, 2).std(axis=(1, 3)).repeat(2, axis=1)[:, None, None, :]
        >>> bool(np.allclose(y, x / (1 + np.exp(-x)) / std, atol=1e-5))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """
    x = float_tensor(x)
    ndim, a, channels = channel_axis(x, axis)
    g = resolve_groups(check_groups(groups), channels, axis)
    if g == channels:  # one value per group without a spatial axis: a zero variance everywhere
        require_spatial(x.shape, "EvoNorm-S0 with one channel per group", argument="x",
                        fix="Add a spatial axis, or use fewer groups than channels.")
    epsilon = check_epsilon(epsilon, positive=True, reason=EVO_NORM_EPSILON_REASON)
    v, gamma, beta = (check_param(name, param, (channels,), stats_dtype(x.dtype))
                      for name, param in (("v", v), ("gamma", gamma), ("beta", beta)))
    shape, grouped = grouped_dims(x, a, g, channels)
    xs = widened(x)
    _, variance = moments(ops.reshape(xs, grouped), complement([a], ndim + 1, keep_batch=True))
    gate = xs if v is None else xs * ops.cast(per_channel(v, ndim, a, channels), xs.dtype)
    z = ops.reshape(xs * ops.sigmoid(gate), grouped)

    def grouped_param(p: Tensor | None) -> Tensor | None:
        if p is None:
            return None
        return feature_param(ops.reshape(p, (g, channels // g)), ndim + 1, [a, a + 1], [g, channels // g])

    y = normalize(z, 0.0, variance, gamma=grouped_param(gamma), beta=grouped_param(beta), epsilon=epsilon)
    return ops.cast(ops.reshape(y, shape), x.dtype)
