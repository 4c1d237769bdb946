"""Batch renormalization (Ioffe, 2017): batch norm in training, corrected toward moving statistics."""

from __future__ import annotations

from typing import Literal, overload

from normlab.ops.axes import channel_axis, float_tensor
from normlab.ops.batch_norm import batch_norm_training
from normlab.ops.moments import stats_dtype
from normlab.ops.normalize import check_stddev
from normlab.ops.params import check_param
from normlab.ops.validate import check_bools, check_renorm_clipping
from normlab.types import RenormClipping, ReplicaSum, Tensor


@overload
def batch_renorm(
    x: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, *, axis: int = ..., gamma: Tensor | None = ...,
    beta: Tensor | None = ..., epsilon: float = ..., clipping: RenormClipping | None = ..., mask: Tensor | None = ...,
    virtual_batch_size: int | None = ..., return_stats: Literal[False] = ..., replica_sum: ReplicaSum | None = ...,
) -> Tensor: ...
@overload
def batch_renorm(
    x: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, *, axis: int = ..., gamma: Tensor | None = ...,
    beta: Tensor | None = ..., epsilon: float = ..., clipping: RenormClipping | None = ..., mask: Tensor | None = ...,
    virtual_batch_size: int | None = ..., return_stats: Literal[True], replica_sum: ReplicaSum | None = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def batch_renorm(
    x: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, *, axis: int = ..., gamma: Tensor | None = ...,
    beta: Tensor | None = ..., epsilon: float = ..., clipping: RenormClipping | None = ..., mask: Tensor | None = ...,
    virtual_batch_size: int | None = ..., return_stats: bool, replica_sum: ReplicaSum | None = ...,
) -> Tensor | tuple[Tensor, Tensor, Tensor]: ...
def batch_renorm(
    x: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, *, axis: int = -1, gamma: Tensor | None = None,
    beta: Tensor | None = None, epsilon: float = 1e-3, clipping: RenormClipping | None = None,
    mask: Tensor | None = None, virtual_batch_size: int | None = None, return_stats: bool = False,
    replica_sum: ReplicaSum | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Batch renormalization (training form): batch norm corrected toward moving statistics.

    Formula: with batch ``mean`` and ``std = sqrt(var + epsilon)``, and
    ``s = max(renorm_stddev, sqrt(epsilon))``:
    ``r = clip(std / s, rmin, rmax)``, ``d = clip((mean - renorm_mean) / s, -dmax, dmax)``
    (both without gradient; where ``s`` is 0, with ``epsilon=0``, ``r = 1``
    and ``d = 0``: plain batch norm), and
    ``y = ((x - mean) / std * r + d) * gamma + beta``. This is the
    computation of ``keras.layers.BatchNormalization(renorm=True)`` in training.

    Args:
        x: input of rank >= 2, batch first.
        renorm_mean: per-channel moving mean used for the correction, ``(C,)``.
        renorm_stddev: per-channel moving standard deviation, ``(C,)``.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        clipping: dict with optional keys ``rmax`` (default inf), ``rmin``
            (default 0) and ``dmax`` (default inf), with ``rmin <= 1 <= rmax``.
            Default None (no clipping).
        mask: optional tensor broadcastable to ``x``. Default None.
        virtual_batch_size: optional ghost batch size; ``r`` and ``d`` are
            then per ghost batch. Default None.
        return_stats: also return the batch ``(mean, variance)`` of shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            the batch statistics, and so ``r`` and ``d``, are the global
            batch's (with ghost batches, as in :func:`ghost_batch_norm`).
            Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import batch_norm, batch_renorm
        >>> from keras import ops
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 4)).astype("float32")
        >>> ones, zeros = np.ones(4, "float32"), np.zeros(4, "float32")
        >>> clip = {"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}          # r = 1, d = 0: plain batch norm
        >>> y = ops.convert_to_numpy(batch_renorm(x, zeros, ones, clipping=clip))
        >>> bool(np.allclose(y, ops.convert_to_numpy(batch_norm(x, training=True)), atol=1e-5))
        True

    Reference:
        Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence
        in Batch-Normalized Models", NeurIPS 2017. https://arxiv.org/abs/1702.03275
    """
    x = float_tensor(x)
    _, _, channels = channel_axis(x, axis)
    dtype = stats_dtype(x.dtype)
    renorm_mean = check_param("renorm_mean", renorm_mean, (channels,), dtype, required=True,
                              meaning="the renorm moving mean, per channel", per="channel")
    renorm_stddev = check_param("renorm_stddev", check_stddev(renorm_stddev, "renorm_stddev"), (channels,), dtype,
                                required=True, meaning="the renorm moving standard deviation, per channel",
                                per="channel")
    y, mean, variance = batch_norm_training(
        x, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon, mask=mask,
        virtual_batch_size=virtual_batch_size,
        renorm=(renorm_mean, renorm_stddev, check_renorm_clipping(clipping)), replica_sum=replica_sum,
    )
    return (y, mean, variance) if check_bools(return_stats=return_stats)[0] else y
