"""Batch normalization and its training forms: ghost batches (Hoffer et al., 2017) and
the batch renormalization correction (Ioffe, 2017; the op: :mod:`normlab.ops.batch_renorm`)."""

from __future__ import annotations

import functools
from typing import Literal, overload

from keras import ops

from normlab import _compat, backends
from normlab.ops.arith import at_least, at_most
from normlab.ops.axes import channel_axis, complement, dims, feature_param, float_tensor, known_dims, the_channel_axis
from normlab.ops.ghost_batches import merge_batch, split_batch
from normlab.ops.masks import finite_values
from normlab.ops.moments import note_count, shifted_moments, size_as, stats_dtype, widened
from normlab.ops.normalize import check_variance, normalize
from normlab.ops.params import check_param
from normlab.ops.validate import (
    check_bools,
    check_epsilon,
    check_mask,
    check_positive_int,
    check_replica_sum,
    error_message,
)
from normlab.types import RenormClipping, ReplicaSum, Tensor


@overload
def batch_norm(
    x: Tensor, mean: Tensor | None = ..., variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    mask: Tensor | None = ..., return_stats: Literal[False] = ..., replica_sum: ReplicaSum | None = ...,
) -> Tensor: ...
@overload
def batch_norm(
    x: Tensor, mean: Tensor | None = ..., variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    mask: Tensor | None = ..., return_stats: Literal[True], replica_sum: ReplicaSum | None = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def batch_norm(
    x: Tensor, mean: Tensor | None = ..., variance: Tensor | None = ..., *, axis: int = ...,
    gamma: Tensor | None = ..., beta: Tensor | None = ..., epsilon: float = ..., training: bool = ...,
    mask: Tensor | None = ..., return_stats: bool, replica_sum: ReplicaSum | None = ...,
) -> Tensor | tuple[Tensor, Tensor, Tensor]: ...
def batch_norm(
    x: Tensor, mean: Tensor | None = None, variance: Tensor | None = None, *, axis: int = -1,
    gamma: Tensor | None = None, beta: Tensor | None = None, epsilon: float = 1e-3, training: bool = False,
    mask: Tensor | None = None, return_stats: bool = False, replica_sum: ReplicaSum | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Batch normalization: statistics per channel over the batch and all other axes.

    Formula: with ``training=True``, ``mean`` and ``var`` per channel over
    every axis but ``axis`` (the batch statistics); with ``training=False``,
    the given ``mean`` and ``variance`` (e.g. moving averages). Then
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``.

    Args:
        x: input of rank >= 2, batch first.
        mean: per-channel mean of shape ``(C,)``; required when ``training=False``. Default None.
        variance: per-channel variance of shape ``(C,)``; required when ``training=False``. Default None.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale of shape ``(C,)``. Default None.
        beta: optional per-channel offset of shape ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        training: use batch statistics (True) or the given ones (False). Default False.
        mask: optional tensor broadcastable to ``x``; masked-out elements do
            not count toward the batch statistics. Default None.
        return_stats: also return the statistics used, as ``(y, mean, variance)``
            with shape ``(C,)`` (the biased batch variance when training; NaN for a batch
            known to be empty, whose output is the empty input). Default False.
        replica_sum: optional callable that sums a tensor over all replicas
            (:func:`normlab.distributed.replica_sum`); with ``training=True``
            the batch statistics are then those of the global batch (every
            replica's ``x``), and the backend fast path is not used. Default
            None (this call's ``x`` only).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import batch_norm
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
    x = float_tensor(x)
    training, return_stats = check_bools(training=training, return_stats=return_stats)
    ndim = len(x.shape)
    a = the_channel_axis(axis, ndim, "batch normalization")
    (channels,) = known_dims(x.shape, [a], axis=axis)
    epsilon = check_epsilon(epsilon)
    check_variance(variance)  # (a host value, before it becomes a tensor whose values are never read)
    gamma, beta, mean, variance = (
        check_param(name, param, (channels,), stats_dtype(x.dtype))
        for name, param in (("gamma", gamma), ("beta", beta), ("mean", mean), ("variance", variance)))
    reduce_axes = complement([a], ndim)
    check_mask(mask, x.shape)  # (inference ignores it, but a wrong one is an error whatever `training` is)
    check_replica_sum(replica_sum)  # (so does inference)

    if training and _known_empty(x, reduce_axes, replica_sum):
        nan = _nan_statistics(channels, x.dtype)
        return (x, nan, nan) if return_stats else x
    if training:
        # Fast paths reduce over this call's x only: never with a cross-replica sum.
        hook = backends.fast_path("batch_norm_train", epsilon=epsilon) if mask is None and replica_sum is None else None
        result = None
        if hook is not None:
            result = hook(x, axis=a, gamma=gamma, beta=beta, epsilon=epsilon)
        if result is None:
            xw = widened(x)
            shift, mean, variance = shifted_moments(xw, reduce_axes, mask=mask, replica_sum=replica_sum)
            y = ops.cast(normalize(
                xw if mask is None else finite_values(xw), mean, variance, shift=shift, epsilon=epsilon,
                gamma=feature_param(gamma, ndim, [a], [channels]),
                beta=feature_param(beta, ndim, [a], [channels]),
            ), x.dtype)
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
        hook = backends.fast_path("batch_norm_infer", epsilon=epsilon)
        y = None
        if hook is not None:
            y = hook(x, axis=a, mean=mean, variance=variance, gamma=gamma, beta=beta, epsilon=epsilon)
        if y is None:
            y = normalize(
                x, feature_param(mean, ndim, [a], [channels]), feature_param(variance, ndim, [a], [channels]),
                epsilon=epsilon, gamma=feature_param(gamma, ndim, [a], [channels]),
                beta=feature_param(beta, ndim, [a], [channels]),
            )
    return (y, mean, variance) if return_stats else y


def _renorm_correction(
    shift: Tensor, residual_mean: Tensor, variance: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, *,
    epsilon: float, clipping: RenormClipping, shape: tuple[int, int, int],
) -> tuple[Tensor, Tensor]:
    """Batch renorm's ``(r, d)`` without gradient, from the renorm moving averages before the layer updates
    them (:func:`normlab.backends.saved_for_backward` keeps the backward on these values)."""
    rank, c, channels = shape
    floor = epsilon ** 0.5  # not math.sqrt: see validate.is_finite
    moving_std = at_least(ops.cast(feature_param(renorm_stddev, rank, [c], [channels]), variance.dtype), floor)
    moving_mean = ops.cast(feature_param(renorm_mean, rank, [c], [channels]), variance.dtype)
    known = None
    if floor == 0:
        # A moving std of 0 (epsilon=0, a channel constant so far) scales nothing to correct toward: r = 1 and
        # d = 0 there, plain batch norm, which defines the zero-variance case (0 / 0 and x / 0 gave NaN and inf).
        known = moving_std > 0
        moving_std = ops.where(known, moving_std, ops.ones_like(moving_std))
    r = ops.sqrt(variance + epsilon) / moving_std
    d = ((shift - moving_mean) + residual_mean) / moving_std  # not mean - moving_mean: rounded at the offset
    if known is not None:
        r, d = ops.where(known, r, ops.ones_like(r)), ops.where(known, d, ops.zeros_like(d))
    if "rmin" in clipping:
        r = at_least(r, clipping["rmin"])
    if "rmax" in clipping:
        r = at_most(r, clipping["rmax"])
    if "dmax" in clipping:
        d = at_most(at_least(d, -clipping["dmax"]), clipping["dmax"])
    return ops.stop_gradient(r), ops.stop_gradient(d)


def _known_empty(x: Tensor, reduce_axes: list[int], replica_sum: ReplicaSum | None) -> bool:
    """Whether the batch statistics are known to count no element (a replica's empty share
    still takes part in the all-reduces: never with ``replica_sum``)."""
    return replica_sum is None and any(x.shape[r] == 0 for r in reduce_axes)


def _nan_statistics(channels: int, dtype: str) -> Tensor:
    """The statistics of a batch known to be empty: NaN, which no moving average should take."""
    return ops.zeros((channels,), dtype=stats_dtype(dtype)) + float("nan")  # (not full: a host read on torch)


def batch_norm_training(
    x: Tensor, *, axis: int, gamma: Tensor | None, beta: Tensor | None, epsilon: float, mask: Tensor | None,
    virtual_batch_size: int | None, renorm: tuple[Tensor, Tensor, RenormClipping] | None,
    replica_sum: ReplicaSum | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode batch norm with optional ghost batches and renorm correction.

    Returns ``(y, mean, variance)`` with the statistics of shape ``(C,)``, averaged over the ghost batches
    (weighted by unmasked positions). With ``replica_sum``, the statistics are the global batch's; with ghost
    batches too, each ghost batch keeps its own statistics (as on one device with the global batch, when each
    replica's batch is a multiple of the ghost size) and the returned averages are over every replica's ghost batches.
    """
    x = float_tensor(x)
    ndim, a, channels = channel_axis(x, axis)
    epsilon = check_epsilon(epsilon)
    check_mask(mask, x.shape)
    check_replica_sum(replica_sum)
    dtype = stats_dtype(x.dtype)
    gamma, beta = check_param("gamma", gamma, (channels,), dtype), check_param("beta", beta, (channels,), dtype)
    v = check_positive_int("virtual_batch_size", virtual_batch_size, example=32, allow_none=True,
                           meaning="the size of each ghost batch")
    if _known_empty(x, complement([a], ndim), replica_sum):  # as batch_norm (no ghost batch to split)
        nan = _nan_statistics(channels, x.dtype)
        return x, nan, nan
    if _compat.in_symbolic_scope():  # Keras inferring shapes (its placeholder batch, 83 on torch, or a symbolic
        v = None  # one on JAX, need not be a multiple of v): ghost batches change no shape
    out_dtype, x = x.dtype, widened(x)
    if v is not None:
        x_work, mask = split_batch(x, v, mask)
        c, rank = a + 1, ndim + 1
        reduce_axes = [i for i in range(1, rank) if i != c]  # keep the ghost axis 0
    else:
        x_work, c, rank = x, a, ndim
        reduce_axes = complement([a], ndim)
    # Ghost batches never span replicas: only their average is synchronized (below).
    shift, residual_mean, variance = shifted_moments(
        x_work, reduce_axes, mask=mask, replica_sum=None if v is not None else replica_sum, batch_statistics=True
    )
    mean = shift + residual_mean
    dtype = mean.dtype
    gamma_b = None if gamma is None else ops.cast(feature_param(gamma, rank, [c], [channels]), dtype)
    beta_b = None if beta is None else ops.cast(feature_param(beta, rank, [c], [channels]), dtype)
    if renorm is not None:
        r, d = backends.saved_for_backward(
            functools.partial(_renorm_correction, epsilon=epsilon, clipping=renorm[2], shape=(rank, c, channels)),
            ops.stop_gradient(shift), ops.stop_gradient(residual_mean), ops.stop_gradient(variance), *renorm[:2])
        # ((x - mean) / std * r + d) * gamma + beta, folded into the affine.
        gamma_b, beta_b = (r, d) if gamma_b is None else (r * gamma_b, d * gamma_b)
        beta_b = beta_b if beta is None else beta_b + ops.cast(feature_param(beta, rank, [c], [channels]), dtype)
    # Subtract the shift, then the small residual mean: exact at large offsets.
    x_apply = x_work if mask is None else finite_values(x_work)
    y = normalize(x_apply, residual_mean, variance, shift=shift, gamma=gamma_b, beta=beta_b, epsilon=epsilon)
    if v is not None:
        y = merge_batch(y, x)
        if mask is not None:  # each ghost batch weighs as many as its unmasked positions
            mean, variance = _ghost_average(mean, variance, ops.sum(mask, reduce_axes, keepdims=True), replica_sum)
        elif replica_sum is None:  # (sum / count: Keras' ops.mean reduces float64 in float32 on torch and JAX)
            ghosts = size_as(dims(mean)[0], dtype)
            mean, variance = ops.sum(mean, axis=0) / ghosts, ops.sum(variance, axis=0) / ghosts
        else:
            ghosts = ops.broadcast_to(size_as(dims(mean)[0], dtype), ops.shape(mean)[1:])
            total_mean, total_variance, ghosts = ops.unstack(
                replica_sum(ops.stack([ops.sum(mean, axis=0), ops.sum(variance, axis=0), ghosts]))
            )
            note_count(replica_sum, ghosts)
            mean, variance = total_mean / ghosts, total_variance / ghosts
    return ops.cast(y, out_dtype), ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,))


def _ghost_average(mean: Tensor, variance: Tensor, counts: Tensor,
                   replica_sum: ReplicaSum | None) -> tuple[Tensor, Tensor]:
    """Ghost batches' statistics averaged with weights ``counts`` (their unmasked positions), over every replica's."""
    counts = ops.cast(ops.broadcast_to(counts, ops.shape(mean)), mean.dtype)
    kept = counts > 0  # a ghost batch of padding only: no statistics to weigh
    totals = [ops.sum(ops.where(kept, counts * mean, counts), axis=0),  # (counts is 0 where not kept)
              ops.sum(ops.where(kept, counts * variance, counts), axis=0), ops.sum(counts, axis=0)]
    if replica_sum is not None:
        totals = ops.unstack(replica_sum(ops.stack(totals)))
        note_count(replica_sum, totals[2])  # the positions kept over every replica's ghost batches
    total = at_least(totals[2], 1.0)  # an all-padding batch: zeros, as an empty ghost batch gives
    return totals[0] / total, totals[1] / total


@overload
def ghost_batch_norm(
    x: Tensor, virtual_batch_size: int, *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., mask: Tensor | None = ..., return_stats: Literal[False] = ...,
    replica_sum: ReplicaSum | None = ...,
) -> Tensor: ...
@overload
def ghost_batch_norm(
    x: Tensor, virtual_batch_size: int, *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., mask: Tensor | None = ..., return_stats: Literal[True],
    replica_sum: ReplicaSum | None = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def ghost_batch_norm(
    x: Tensor, virtual_batch_size: int, *, axis: int = ..., gamma: Tensor | None = ..., beta: Tensor | None = ...,
    epsilon: float = ..., mask: Tensor | None = ..., return_stats: bool, replica_sum: ReplicaSum | None = ...,
) -> Tensor | tuple[Tensor, Tensor, Tensor]: ...
def ghost_batch_norm(
    x: Tensor, virtual_batch_size: int, *, axis: int = -1, gamma: Tensor | None = None, beta: Tensor | None = None,
    epsilon: float = 1e-3, mask: Tensor | None = None, return_stats: bool = False,
    replica_sum: ReplicaSum | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Ghost batch normalization: batch statistics per virtual sub-batch (training form).

    Formula: split the batch into ``B / virtual_batch_size`` consecutive
    ghost batches; normalize each with its own per-channel ``mean`` and
    ``var`` (over the ghost batch and the spatial axes):
    ``y = (x - mean_g) / sqrt(var_g + epsilon) * gamma + beta``. The returned
    statistics are the averages over the ghost batches (what the moving
    averages are updated with, as in TF 1's ``virtual_batch_size``).

    Args:
        x: input of rank >= 2, batch first; the batch size must be a multiple
            of ``virtual_batch_size``.
        virtual_batch_size: samples per ghost batch, a positive int.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        mask: optional tensor broadcastable to ``x``; masked-out elements do
            not count toward the statistics, and each ghost batch weighs in
            the returned averages as its unmasked elements. Default None.
        return_stats: also return ``(mean, variance)`` of shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`).
            Each ghost batch still uses its own statistics (ghost batches are
            consecutive samples of one replica's batch); the returned
            averages are then over every replica's ghost batches, as for the
            global batch on one device. Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import batch_norm, ghost_batch_norm
        >>> from keras import ops
        >>> x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
        >>> y = ops.convert_to_numpy(ghost_batch_norm(x, 4))
        >>> bool(np.allclose(y[:4], ops.convert_to_numpy(batch_norm(x[:4], training=True)), atol=1e-5))
        True

    Reference:
        Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
        generalization gap in large batch training of neural networks",
        NeurIPS 2017. https://arxiv.org/abs/1705.08741
    """
    if virtual_batch_size is None:
        raise ValueError(
            error_message("virtual_batch_size", "a positive integer", "virtual_batch_size=None",
                          "Pass the ghost batch size, e.g. virtual_batch_size=32, or use batch_norm.")
        )
    y, mean, variance = batch_norm_training(
        x, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon, mask=mask,
        virtual_batch_size=virtual_batch_size, renorm=None, replica_sum=replica_sum,
    )
    return (y, mean, variance) if check_bools(return_stats=return_stats)[0] else y
