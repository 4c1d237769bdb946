"""The statistics kernel: mean and variance over given axes, for every norm
(and the second moment about zero, :func:`mean_square`, for the RMS norms).

Numerics policy (the one place it is decided):

* Statistics are computed in float32 at least: float16 and bfloat16 inputs
  are upcast before any reduction, float64 stays float64.
* Variance is two-pass and shifted: the residuals ``d = x - s`` are taken
  about a per-slice shift ``s`` (a constant for autodiff): the median of
  each slice's first, middle and last elements (an element of the slice,
  near its mean unless two of the three are outliers; with a mask, of its
  first, middle and last kept ones: :mod:`normlab.ops.samples`). A first
  pass takes their mean ``c``, a second their variance ``mean((d - c)**2)``.
  Never ``E[x^2] - E[x]^2``, which cancels catastrophically for inputs with
  a large offset (1e6 + small noise) and can even go negative. The apply
  step subtracts ``s`` then ``c`` (see :func:`shifted_moments`), so the
  output stays exact even where the mean itself cannot be held in the
  input's dtype (float32 near 1e6 holds it only to 1/16).
* Variance is the biased (population) variance, as in Keras and the papers,
  and is clamped at zero so that ``rsqrt(var + epsilon)`` is always finite.
* An optional ``mask`` (broadcastable to ``x``; nonzero or True = counts,
  0 = ignored, as Keras' boolean masks) selects the elements; the values at
  masked positions never enter the sums (a NaN or inf of padding leaves the
  statistics finite), and a slice with no unmasked element gets mean 0 and
  variance 0.
* An optional ``replica_sum`` (a callable summing a tensor over replicas,
  see :mod:`normlab.distributed`) makes the statistics those of the global
  batch: the same two passes, each on sums that are all-reduced once (pass
  1: the sum and the count, whose quotient is the shift; pass 2: the sums
  of the residuals and of their squares). Uneven per-replica batches stay
  exact, and no replica ever forms ``E[x^2] - E[x]^2`` about zero. A
  :class:`CountingSum` also keeps the global count that pass 1 summed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from keras import ops
from keras.backend import standardize_dtype

from normlab.ops.arith import at_least
from normlab.ops.axes import along_short_rows, canonicalize_axes, dims, float_tensor, is_traced_int, scalar, zero_of
from normlab.ops.masks import spread_over
from normlab.ops.samples import median_sample
from normlab.ops.sums import total
from normlab.ops.validate import check_bool, check_mask, check_replica_sum
from normlab.types import Axis, DTypeLike, ReplicaSum, Tensor


class CountingSum:
    """A replica sum that keeps the global count of the statistics summed with it.

    The statistics kernels record the all-reduced size of the batch
    behind the last statistics they synchronized through it in
    :attr:`count` (None until then): the elements per channel a mask keeps
    (all of them without one), or ghost batches without a mask. Layers read it to learn whether
    the global batch held any sample, and its size, without a collective of
    their own: one more all-reduce costs a round trip, and one that does not
    depend on the statistics may be scheduled in a different order on each
    rank by a compiler (``torch.compile`` retracing on one rank only).
    """

    def __init__(self, replica_sum: ReplicaSum) -> None:
        self.replica_sum = replica_sum
        self.count: Tensor | None = None

    def __call__(self, tensor: Tensor) -> Tensor:
        return self.replica_sum(tensor)


def note_count(replica_sum: ReplicaSum | None, count: Tensor) -> None:
    """Records the global ``count`` on ``replica_sum`` if it is a :class:`CountingSum`."""
    if isinstance(replica_sum, CountingSum):
        replica_sum.count = count


def stats_dtype(dtype: DTypeLike) -> str:
    """The dtype statistics are computed in for inputs of ``dtype``: float64
    for float64, else float32 (half-precision inputs get float32 statistics).

    Args:
        dtype: an input's dtype, anything ``keras.backend.standardize_dtype`` takes.

    Example:
        >>> from normlab.ops import stats_dtype
        >>> stats_dtype("bfloat16"), stats_dtype("float64")
        ('float32', 'float64')
    """
    return "float64" if standardize_dtype(dtype) == "float64" else "float32"


def _reduced_size(x: Tensor, axes: Sequence[int]) -> Any:
    """The number of elements each slice reduces over: a Python int (or a
    torch SymInt under a dynamic shape) where every reduced size is known to
    the tracer, else an integer tensor from ``ops.shape``."""
    static = list(x.shape)
    count: Any = 1
    dynamic = None
    for a in axes:
        if static[a] is None:
            dynamic = ops.shape(x) if dynamic is None else dynamic
            count = count * dynamic[a]
        else:
            count = count * static[a]
    return count


def _reduced_count(x: Tensor, axes: Sequence[int], dtype: DTypeLike) -> Tensor:
    """The number of elements each slice reduces over, as a scalar of ``dtype``."""
    return size_as(_reduced_size(x, axes), dtype)


def size_as(size: Any, dtype: DTypeLike) -> Tensor:
    """A size as a scalar of ``dtype``: a Python int by :func:`normlab.ops.axes.scalar`
    (no tensor made of it on the host), a size known only at run time by a cast."""
    return scalar(size, dtype) if isinstance(size, int) else ops.cast(size, dtype)


def _averager(x: Tensor, axes: list[int]) -> Callable[[Tensor], Tensor]:
    """``average(v)``: the mean of ``v`` over ``axes``, reduced axes kept.

    ``sum / count`` rather than ``ops.mean``: on torch, Keras 3.15 reduces
    float64 means in float32.
    """
    # A Python number stays one: casting a torch SymInt (a dynamic batch
    # size) to a tensor would specialize a compiled graph to its value.
    # An empty slice (a size 0, known or only at run time) counts as one element: its
    # mean and variance are 0 and 0, as an all-padding slice's (see shifted_moments), and
    # the gradients, sums over no element, 0 (0 / 0 made every parameter's NaN).
    count = _reduced_size(x, axes)
    if isinstance(count, int):
        count = max(count, 1)
    elif not is_traced_int(count):  # (a torch SymInt is never 0: torch.compile specializes 0)
        count = at_least(ops.cast(count, x.dtype), 1.0)

    def average(v: Tensor) -> Tensor:
        return total(v, axes) / count
    return average


def mean_square(x: Tensor, axes: Axis) -> Tensor:
    """``mean(x^2)`` over ``axes`` (kept as size-1 dims), in float32 at least.

    The second moment about zero, for the norms that divide by a root mean
    square (RMS, filter response): nothing is subtracted, so there is no
    cancellation to guard against. With no axes it is ``x^2`` itself (one
    element per statistic).

    Args:
        x: input tensor.
        axes: the axes to average over (an int or a list of ints; ``[]`` for none).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import mean_square
        >>> ops.convert_to_numpy(mean_square(np.array([[3.0, 4.0]], "float32"), [1])).tolist()
        [[12.5]]
    """
    x = float_tensor(x)
    empty = isinstance(axes, (list, tuple)) and not axes  # no axes: x^2 itself
    axes = [] if empty else canonicalize_axes(axes, len(x.shape), argument="axes", allow_batch=True)
    x = ops.cast(x, stats_dtype(x.dtype))
    square = x * x  # not ops.square: LiteRT rejects the pow that litert_torch makes of it on 5-D tensors
    return _averager(x, list(axes))(square) if axes else square


def _cross_replica_moments(
    x: Tensor, axes: list[int], weight: Tensor | None, replica_sum: ReplicaSum
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`shifted_moments` over the global batch, from two all-reduced passes."""
    if weight is None:
        def summed(v: Tensor) -> Tensor:
            return total(v, axes)

        count = _reduced_count(x, axes, x.dtype)
    else:
        kept = weight > 0

        def summed(v: Tensor) -> Tensor:  # padding's values (NaN, inf, 1e20) never reach the sums
            return total(ops.where(kept, v, zero_of(v)), axes)

        count = total(weight, axes)
    first = summed(ops.stop_gradient(x))
    # Pass 1: the global sum and count (of the elements a mask keeps), one all-reduce; their
    # quotient is the shift.
    first, count = ops.unstack(replica_sum(ops.stack([ops.broadcast_to(r, ops.shape(first)) for r in (first, count)])))
    note_count(replica_sum, ops.stop_gradient(count))
    count = ops.stop_gradient(at_least(count, 1.0))
    shift = ops.stop_gradient(first / count)
    # Pass 2: residual sums about the shared shift, one all-reduce (with gradient). Padding is
    # replaced by the shift first: its residual is then 0 and so is its gradient (a NaN or an inf
    # there, squared, made the gradient of ``where`` NaN: 0 * 2 * NaN).
    residual = (x if weight is None else ops.where(weight > 0, x, shift)) - shift
    sums, squares = ops.unstack(replica_sum(ops.stack([summed(residual), summed(residual * residual)])))
    mean = sums / count
    variance = squares / count - mean * mean
    variance = ops.relu(variance)  # clamp at 0; Keras' ops.maximum returns float32 for float64 on torch
    return shift, mean, variance


def widened(x: Tensor) -> Tensor:
    """``x`` in :func:`stats_dtype`, cast once (nothing to do for float32 and float64).

    A general path whose statistics and apply step both read ``x`` takes
    this one tensor for both: autodiff then adds their two gradient terms,
    which largely cancel, in float32 before the one cast back, instead of
    rounding each to half precision first (float16 ``dx`` was 2 to 22
    spacings off float64, against at most 1 now).
    """
    return ops.cast(x, stats_dtype(x.dtype))


def shifted_moments(
    x: Tensor, axes: Axis, *, mask: Tensor | None = None, replica_sum: ReplicaSum | None = None,
    batch_statistics: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Statistics of ``x`` relative to a per-slice shift, for the exact apply step.

    Returns ``(shift, mean, variance)``, all with the reduced axes kept:
    ``shift`` is (within a rounding) an element of each slice (the median of its first, middle
    and last ones, or with a mask kept ones, by
    :func:`~normlab.ops.samples.median_of_three`; no gradient flows through it),
    ``mean`` and ``variance`` are those of ``x - shift``, so the mean of
    ``x`` is ``shift + mean``. Pass all three to
    :func:`~normlab.ops.normalize.normalize` (``shift=shift``); the result
    does not depend on the shift, only its rounding does, which is why it
    is kept apart.

    Args:
        x: input tensor.
        axes: the axes to reduce (an int or a list of ints; the batch axis too).
        mask: optional tensor broadcastable to ``x``; zero entries are left out. Default None.
        replica_sum: optional callable summing over replicas, as in :func:`moments`. Default None.
        batch_statistics: whether the statistics reduce the batch axis, as in
            :func:`~normlab.ops.samples.first_along` (ghost batches pass True).
            Default None (whether axis 0 is in ``axes``).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import shifted_moments
        >>> x = np.array([[1e6 + 1.0, 1e6 + 3.0]], "float32")
        >>> shift, mean, var = (ops.convert_to_numpy(t).tolist() for t in shifted_moments(x, [1]))
        >>> shift, mean, var
        ([[1000001.0]], [[1.0]], [[1.0]])
    """
    x = float_tensor(x)
    axes = canonicalize_axes(axes, len(x.shape), argument="axes", allow_batch=True)
    check_mask(mask, x.shape)
    check_replica_sum(replica_sum)
    if batch_statistics is not None:
        check_bool("batch_statistics", batch_statistics)
    dtype = stats_dtype(x.dtype)
    x = ops.cast(x, dtype)
    if replica_sum is not None:
        weight = None if mask is None else ops.cast(spread_over(mask, x, axes), dtype)
        return _cross_replica_moments(x, axes, weight, replica_sum)
    if mask is None:
        average = _averager(x, axes)
        # The shift is an element of each slice, taken with no product (the
        # median of three, samples.median_of_three): a computed mean (near
        # the data's offset) would be recomputed by XLA inside each fusion
        # that uses it, with a fused multiply-add in some and not in others,
        # which moves the residuals of one fusion against another's by an
        # ulp of the offset (0.06 at 1e6: the parameter gradients under jit
        # were off by 3%). A sample is the same value
        # everywhere, and ``x - sample`` is exact near the offset. The
        # variance is then taken about the residuals' mean (a second pass),
        # since a sample may lie several standard deviations from the mean.
        shift = ops.stop_gradient(median_sample(x, axes, batch_statistics))
        residual = x - along_short_rows(shift, x, axes)
        mean = average(residual)
        centered = residual - along_short_rows(mean, x, axes)  # squared as a product: see mean_square
        variance = average(centered * centered)
        return shift, mean, variance
    # With a mask the first element may be padding, and padding's values (a
    # NaN, an inf, 1e20 whose square overflows) must not reach the sums:
    # the shift is the median of the first, middle and last kept elements (a
    # sample, as above), and padding is replaced by it, so its residuals are
    # exactly 0. Then the same two passes.
    kept = spread_over(mask, x, axes)  # broadcast against x in each use: no full-size copy of a small mask
    weight = ops.cast(kept, dtype)
    count = total(weight, axes)
    count = at_least(count, 1.0)  # an all-padding slice: mean 0, variance 0
    shift = median_sample(ops.stop_gradient(x), axes, kept=kept)  # a constant: nothing recorded for autodiff
    residual = ops.where(kept, x, shift) - shift
    mean = total(residual, axes) / count
    centered = (residual - mean) * weight
    variance = total(centered * centered, axes) / count
    return shift, mean, variance


def moments(
    x: Tensor,
    axes: Axis,
    *,
    mask: Tensor | None = None,
    keepdims: bool = True,
    replica_sum: ReplicaSum | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``axes``, in float32 at least.

    Formula: ``mean = sum(w * x) / sum(w)``, ``var = sum(w * (x - mean)^2) / sum(w)``
    with ``w = (mask != 0)`` (or 1), reduced over ``axes``.

    Args:
        x: input tensor (an integer or bool one is taken as float32; a
            complex one is refused).
        axes: axis or axes to reduce over (ints; negative ones count from the end).
        mask: optional tensor broadcastable to ``x``; zero (False) entries are
            ignored, any other value counts once. Default None.
        keepdims: keep the reduced axes as size-1 dimensions, so the results
            broadcast against ``x``. Default True.
        replica_sum: optional callable that sums a tensor over all replicas
            (e.g. :func:`normlab.distributed.replica_sum`); the statistics are
            then those of the global batch, the concatenation of every
            replica's ``x``. Default None (this replica's ``x`` only).

    Returns:
        ``(mean, variance)`` in :func:`stats_dtype` of ``x``; 0 and 0 for a
        slice of no element (a size 0, or every element masked out), whose
        ``sum(w)`` counts as 1: finite statistics, and gradients of 0.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import moments
        >>> x = np.array([[1e6 + 1.0, 1e6 - 1.0]], "float32")
        >>> mean, var = moments(x, axes=[1])
        >>> float(ops.convert_to_numpy(var)[0, 0])
        1.0
    """
    x = float_tensor(x)
    axes = canonicalize_axes(axes, len(x.shape), argument="axes", allow_batch=True)
    shift, mean, variance = shifted_moments(x, axes, mask=mask, replica_sum=replica_sum)
    mean = shift + mean
    if not check_bool("keepdims", keepdims):  # a reshape: squeeze needs the reduced axes' static size 1
        kept = [d for a, d in enumerate(dims(x)) if a not in axes]
        mean = ops.reshape(mean, kept)
        variance = ops.reshape(variance, kept)
    return mean, variance
