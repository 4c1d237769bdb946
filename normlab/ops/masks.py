"""Masks in the statistics: a Keras mask as weights or as the positions a
norm's statistics keep, and an input's values as a masked apply step reads
them (see :func:`~normlab.ops.moments.shifted_moments`)."""

from __future__ import annotations

from keras import ops

from normlab.ops.axes import dims, zero_of
from normlab.types import Tensor


def mask_weight(mask: Tensor, dtype: str) -> Tensor:
    """A mask as weights of 0 and 1: any nonzero value counts, as in Keras'
    boolean masks (a mask of token ids or of 0/2 counts by its truth value)."""
    return ops.cast(ops.cast(mask, "bool"), dtype)


def finite_values(x: Tensor) -> Tensor:
    """``x`` with its non-finite values replaced by 0: the input of a masked
    norm's apply step, whose statistics are taken from ``x`` itself.

    The statistics never read padding; the apply step does (its outputs there
    are discarded), and its backward multiplies each position's normalized
    value by its cotangent: 0 times a NaN of padding is NaN, in the
    parameters' gradients and every input's. A non-finite value that the
    mask keeps makes its slice's statistics NaN, and so every output of the
    slice, whatever the apply step reads there: the mask need not be read
    (a full-size broadcast of it, and an ``or``, in every pass that applies)."""
    # |x| < inf is False for NaN and both infinities: two elementwise passes
    # where torch's isfinite makes four (eager torch runs each one on its own).
    return ops.where(ops.abs(x) < float("inf"), x, zero_of(x))  # (an operator: no tensor made of the number)


def _known_rank(mask: Tensor, x: Tensor) -> Tensor:
    """``mask``, broadcast to ``x``'s shape where its rank is unknown (a graph tensor), so
    that what it selects keeps ``x``'s rank."""
    try:
        len(mask.shape)
    except (TypeError, ValueError):
        return ops.broadcast_to(mask, ops.shape(x))
    return mask


def spread_over(mask: Tensor, x: Tensor, axes: list[int]) -> Tensor:
    """``mask != 0`` at ``x``'s rank, broadcast along ``axes`` only: a mask of
    ``(batch, time, 1)`` for channels-last statistics stays one value per
    position, not one per element."""
    kept = _known_rank(ops.cast(mask, "bool"), x)
    for _ in range(len(x.shape) - len(kept.shape)):
        kept = ops.expand_dims(kept, 0)
    shape, own = dims(x), dims(kept)
    return ops.broadcast_to(kept, [shape[a] if a in axes else own[a] for a in range(len(shape))])
