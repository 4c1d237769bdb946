"""Samples of each slice: the shifts that statistics are taken about.

A shift is one of the data's own values, taken with no product that a
compiler could fuse into a multiply-add in one fusion and not in another,
so that every fusion of a compiled graph sees the same bits and ``x - shift``
is exact near the data's offset. Each slice's shift is the median of its
first, middle and last elements (with a mask, of its first, middle and
last kept ones): near the slice's mean unless two of the three are outliers
(:func:`median_of_three`: exact for samples within a factor of 2 of each
other, as near an offset, else within a rounding of the median).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import keras
from keras import ops

from normlab.ops.arith import maximum, minimum
from normlab.ops.axes import dims, may_be_empty, scalar, zero_of
from normlab.ops.sharding import split_axes
from normlab.types import Tensor


def median_sample(x: Tensor, axes: Sequence[int], batch_statistics: bool | None = None,
                  kept: Tensor | None = None) -> Tensor:
    """The median of each slice's first, middle and last elements along ``axes``
    (:func:`first_along`), or given ``kept`` (a mask as :func:`kept_samples`
    takes) of its first, middle and last kept elements; reduced axes kept.

    About the first element alone, an outlier there (3000 among values of
    unit spread) made the residuals' mean a sum of large terms of one sign,
    rounded by their size: batch norm's outputs were 1.2e-5 off float64 at
    8192 terms per channel, 4e-5 at 65536 (about the median, 3e-8 and 1.5e-7).
    """
    if kept is None:
        first, middle, last = (first_along(x, axes, batch_statistics, at) for at in ("first", "middle", "last"))
    else:
        first, middle, last = kept_samples(x, kept, list(axes))
    return median_of_three(first, middle, last)


def median_of_three(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The elementwise median of ``a``, ``b`` and ``c`` (tensors of one float
    dtype and shape), as ``a + median(0, b - a, c - a)``: the median itself
    where ``b - a`` and ``c - a`` are exact (samples within a factor of 2 of
    each other, as near an offset; equal ones), else within a rounding of it.

    Not the maximum and minimum of the samples themselves: full-integer
    LiteRT quantization gives those ops one scale for their inputs and
    output, which the converter takes from the samples' calibrated range and
    passes back to ``x`` through the slices that took them, so that ``x``'s
    values outside that range clipped (a layer norm over 8 channels of
    different offsets quantized 73% off, Keras' layer 1.4%). The differences
    have scales of their own. A select ties the scales the same way, and a
    sum of the samples times 0/1 indicators lost the indicators (quantized at
    the product's scale, to 0). No product is formed, so no compiler fuses
    one into a multiply-add in one place and not another.
    """
    db, dc = b - a, c - a
    return a + maximum(minimum(db, zero_of(db)), minimum(maximum(db, zero_of(db)), dc))


def first_along(x: Tensor, axes: Sequence[int], batch_statistics: bool | None = None,
                at: Literal["first", "middle", "last"] = "first") -> Tensor:
    """The first element of ``x`` along each of ``axes`` (kept as size 1); with
    ``at="last"`` the last, with ``at="middle"`` the middle one along each axis
    of a known size (the first along the others).

    Batch statistics (by default where the batch axis 0 is among ``axes``;
    ghost batches say so) reduce to one value per feature, which a reshape
    then checks: there an axis of a size unknown until run time (a graph's
    batch, a replica's empty share of it, a spatial size) may be 0, and the
    sample is then 0, not an empty slice the reshape rejects. Per-sample
    statistics (GroupNorm, InstanceNorm) keep an empty slice, which
    broadcasts: no pad in their graphs. A ``jax.export`` symbolic size that
    may be 0 (``max(h - 2, 0)`` after a valid convolution) is padded in both:
    its slice, of size ``min(size, 1)``, broadcasts against nothing. So is
    an axis known to be empty: the statistics keep size 1 there, as NumPy's
    ``mean(keepdims=True)``.
    """
    if split_axes(x).intersection(axes):
        return _selected(x, axes, at)

    def span(a: int) -> slice:
        size = x.shape[a]
        if a not in axes:
            return slice(None)
        if at == "last":
            return slice(-1, None)
        if at == "middle" and isinstance(size, int):
            return slice((size - 1) // 2, (size - 1) // 2 + 1)
        return slice(0, 1)

    ndim = len(x.shape)
    sample = x[tuple(span(a) for a in range(ndim))]
    batch_statistics = 0 in axes if batch_statistics is None else batch_statistics
    unknown = [a for a in axes if (x.shape[a] is None and batch_statistics) or may_be_empty(x.shape[a])
               or (isinstance(x.shape[a], int) and x.shape[a] == 0)]  # (a known 0: a statistic of shape 1)
    if unknown:
        index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(ndim))
        sample = ops.pad(sample, [(0, 1) if a in unknown else (0, 0) for a in range(ndim)])[index]
    return sample


def _selected(x: Tensor, axes: Sequence[int], at: Literal["first", "middle", "last"]) -> Tensor:
    """The element :func:`first_along` takes, as a sum over ``axes`` in which
    every other term is 0 (exact): where JAX's explicit sharding splits one of
    them over devices a slice of one element is a type error, and a sum over
    the devices is not. An empty slice gives 0."""
    keep: Any = None
    for a in axes:
        size = x.shape[a]
        index = size - 1 if at == "last" else (size - 1) // 2 if at == "middle" and isinstance(size, int) else 0
        line = ops.reshape(ops.arange(size) == index, [size if i == a else 1 for i in range(len(x.shape))])
        keep = line if keep is None else keep & line
    return ops.sum(ops.where(keep, x, zero_of(x)), axis=list(axes), keepdims=True)


#: The position :func:`kept_samples` gives a slice that keeps nothing (int32's largest).
NOTHING_KEPT = 2**31 - 1

#: :func:`kept_samples` gathers from inputs of at least this many elements: below,
#: the selecting sum's pass over the input costs eager torch less than the
#: gather's few small ops (one thread, the whole shift: 173 against 196 us at
#: 2**16 elements, 262 against 198 at 2**17, 1.7 against 0.2 ms at 2**20).
GATHER_MIN_ELEMENTS = 1 << 17


def _along(x: Tensor, a: int) -> Tensor:
    """``0, 1, ..., n - 1`` along axis ``a`` of ``x`` (size 1 elsewhere), int32:
    a cumulative sum along a line of ``x`` (jax2onnx takes no ``arange`` of a
    symbolic size), padded first along the axes whose size may be 0 at run
    time (a TensorFlow unknown size, a ``jax.export`` symbolic one), so that
    the line has size 1 there, not ``min(size, 1)``, and counted one further
    along ``a`` itself where ``jax.export`` may find it empty. Where JAX's
    explicit sharding splits an axis of ``x`` (a slice or a cumulative sum
    along it is a type error), an ``arange``: sizes are static there."""
    if split_axes(x):
        size = x.shape[a]
        return ops.reshape(ops.arange(size, dtype="int32"), [size if i == a else 1 for i in range(len(x.shape))])
    index = tuple(slice(None) if i == a else slice(0, 1) for i in range(len(x.shape)))
    line = x[index]
    unsure = [i for i, d in enumerate(x.shape) if (i != a and d is None) or may_be_empty(d)]
    if unsure:
        line = ops.pad(line, [(0, 1) if i in unsure else (0, 0) for i in range(len(x.shape))])[index]
    positions = ops.cumsum(ops.ones_like(line, dtype="int32"), axis=a) - 1
    if a in unsure:  # (jax.export's cumsum asks for a size of 1 at least: it ran over one more)
        positions = positions[tuple(slice(0, x.shape[a]) if i == a else slice(None) for i in range(len(x.shape)))]
    return positions


def _torch_traced() -> bool:
    """:func:`normlab.backends.torch_traced`, imported at call time (TensorFlow's hooks import the ops)."""
    from normlab import backends

    return backends.torch_traced()


def kept_samples(x: Tensor, kept: Tensor, axes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The first, middle and last elements of each slice (in row-major order
    over ``axes``) that ``kept`` (bool, of ``x``'s rank, full-size along
    ``axes``, size 1 or ``x``'s elsewhere) selects, each 0 where it selects
    none; reduced axes kept. The middle one is the first kept at or after
    the position halfway between the first and the last kept.

    Positions are minima and maxima over the positions. Where ``kept`` is
    the same for every slice (a Keras mask of ``(batch, time, 1)`` for
    batch statistics over the batch and time of ``(batch, time, C)``), the
    reduced sizes are known and ``x`` is large (:data:`GATHER_MIN_ELEMENTS`),
    each position is one index, and the element is gathered there (one take
    from consecutive axes viewed as one, else a slab along each reduced axis
    in turn): nothing of ``x``'s size is read. Otherwise (a position per
    slice, a reduced size known only at run time, or a torch trace) each
    element is a sum in which every other term is 0. Both are exact, so a
    value XLA recomputes in each fusion is the same value.
    """
    first, middle, last = _kept_elements(x, kept, axes)
    return first, middle, last


def _extreme(candidates: Tensor, axes: list[int], x: Tensor, how: Literal["min", "max"], identity: int) -> Tensor:
    """The least (``how="min"``) or greatest position of each slice, ``identity`` for an empty one."""
    if keras.backend.backend() == "tensorflow":  # Keras' min asserts a nonempty tensor (a batch of 0 in a graph)
        import tensorflow as tf

        return (tf.reduce_min if how == "min" else tf.reduce_max)(candidates, axis=axes, keepdims=True)
    if any(may_be_empty(x.shape[a]) for a in axes):  # (jax.export: a min needs its identity; jax2onnx takes none)
        import jax.numpy as jnp

        return (jnp.min if how == "min" else jnp.max)(candidates, axis=tuple(axes), keepdims=True, initial=identity)
    return (ops.amin if how == "min" else ops.amax)(candidates, axis=axes, keepdims=True)


def _kept_elements(x: Tensor, kept: Tensor, axes: list[int]) -> list[Tensor]:
    shape, axes = dims(x), sorted(axes)
    if any(x.shape[a] == 0 for a in axes):  # an empty slice: nothing to take
        return [ops.zeros([1 if a in axes else d for a, d in enumerate(shape)], x.dtype)] * 3
    position: Any = None
    for a in axes:  # the positions along a, counted on a line of x (an exporter's symbolic size has no arange)
        position = _along(x, a) if position is None else position * shape[a] + _along(x, a)
    # (Not full_like: Keras' torch backend fills from a device tensor, which torch reads on the host.)
    nothing = scalar(NOTHING_KEPT, position.dtype)
    first = _extreme(ops.where(kept, position, nothing), axes, x, "min", NOTHING_KEPT)
    last = _extreme(ops.where(kept, position, scalar(-1, position.dtype)), axes, x, "max", -1)
    last = ops.where(last < 0, nothing, last)
    # At or after halfway, without a division (jax2onnx lowers none of a symbolic size); where
    # nothing is kept the product may wrap, and no position is taken anyway.
    after = (position - first) * 2 >= last - first
    middle = _extreme(ops.where(kept & after, position, nothing), axes, x, "min", NOTHING_KEPT)
    positions = [first, middle, last]
    static = [x.shape[a] for a in axes if isinstance(x.shape[a], int)]
    uniform = all(kept.shape[a] == 1 for a in range(len(shape)) if a not in axes)
    large = math.prod([d for d in x.shape if isinstance(d, int)]) >= GATHER_MIN_ELEMENTS  # (a generator breaks dynamo)
    # (Under a torch trace sizes may be symbolic, which the gather's index arithmetic cannot take.)
    # (JAX's explicit sharding: a gather from a split axis is a type error.)
    if not (uniform and large and len(static) == len(axes)) or _torch_traced() or split_axes(x):
        return [ops.sum(ops.where(position == p, x, zero_of(x)), axis=axes, keepdims=True) for p in positions]
    return [_gathered(x, shape, axes, p, math.prod(static)) for p in positions]


def _gathered(x: Tensor, shape: list[Any], axes: list[int], at: Tensor, reduced: int) -> Tensor:
    """The element of each slice at position ``at`` (one for all slices), 0 where it is NOTHING_KEPT."""
    keep = [1 if a in axes else d for a, d in enumerate(shape)]
    found = at < NOTHING_KEPT
    rest = ops.reshape(ops.minimum(at, scalar(reduced - 1, at.dtype)), [1])
    lo, hi = axes[0], axes[-1]
    if hi - lo + 1 == len(axes):  # consecutive axes: one take from a view of them as one axis
        sample = ops.reshape(ops.take(ops.reshape(x, shape[:lo] + [reduced] + shape[hi + 1:]), rest, axis=lo), keep)
    else:
        sample = x
        for a in reversed(axes):  # the position's index along each axis, the last axis first
            sample = ops.take(sample, rest % shape[a], axis=a)
            rest = rest // shape[a]
    return ops.where(found, sample, ops.zeros_like(sample))
