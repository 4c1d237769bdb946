"""Axis and shape handling: user ``axis`` arguments as validated, sorted lists,
static-or-dynamic shapes, and parameters reshaped to broadcast on feature axes.

Convention: axis 0 is the batch axis, and no normalization in normlab
chooses it as a feature axis. Negative axes count from the end.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Sequence

import keras
import numpy as np
from keras import ops

from normlab.ops.validate import ArgumentTypeError, error_message, is_text
from normlab.types import Axis, Shape, Tensor


def as_axis_list(axis: object, *, argument: str = "axis") -> list[int]:
    """Returns ``axis`` (an int or a sequence of ints) as a list, unvalidated."""
    if type(axis) is int:  # the usual cases first, without the ABC checks (a layer asks on every call)
        return [axis]
    if isinstance(axis, (list, tuple)) and axis and all(type(a) is int for a in axis):
        return list(axis)
    if isinstance(axis, bool):
        raise ArgumentTypeError(
            error_message(argument, "an int or a list of ints", f"{argument}={axis!r}",
                          "Pass an int such as axis=-1.")
        )
    if isinstance(axis, numbers.Integral):
        return [int(axis)]
    if isinstance(axis, np.ndarray):
        axis = list(np.atleast_1d(axis))
    elif isinstance(axis, range) or type(axis).__name__ in ("dict_keys", "dict_values"):
        axis = list(axis)  # type: ignore[call-overload]  # a sequence of ints in another container
    if isinstance(axis, (list, tuple)) and axis and all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axis
    ):
        return [int(a) for a in axis]
    raise ArgumentTypeError(
        error_message(
            argument,
            "an int or a non-empty list of ints",
            f"{argument}={axis!r}",
            "Pass an int such as axis=-1, or a list such as axis=[1, 2].",
        )
    )


def reject_batch_axis(axes: Sequence[int], axis: object) -> None:
    """Raises where ``axes`` (a layer's feature axes, as given) name the batch
    axis 0: known without the input's rank, so layers check at construction."""
    if 0 in axes:
        raise ValueError(
            error_message(
                "axis",
                "feature axes other than the batch axis 0",
                f"axis={axis!r}",
                "Normalization statistics are never shared across the batch axis this way; "
                "use axis=-1 for channels-last or axis=1 for channels-first inputs.",
            )
        )


def single_axis(axis: object, owner: str) -> int:
    """``axis`` as the one channel axis of a per-channel layer ``owner``: an int, never a list."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ArgumentTypeError(
            error_message("axis", f"a single int (the channel axis) for {owner}", f"axis={axis!r}",
                          "Pass one axis such as axis=-1 (channels-last) or axis=1 (channels-first).")
        )
    return int(axis)


def check_real(x: Tensor, argument: str) -> None:
    """Raises for a complex tensor (a cast would drop its imaginary part)."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "complex" in dtype:
        raise ArgumentTypeError(error_message(
            argument, "a real tensor (float, or int and bool, cast to float)", f"{argument} of dtype {dtype}",
            "Normalize the real and imaginary parts as separate features, e.g. "
            "keras.ops.stack([keras.ops.real(x), keras.ops.imag(x)], axis=-1)."))


def float_tensor(x: Tensor, argument: str = "x") -> Tensor:
    """``x`` as a tensor the ops compute on: float dtypes as given, integers and
    bools (uint8 images, say) cast to float32, never truncated back; a complex
    tensor and text (strings, alone or in an array or list) are refused, naming ``argument``."""
    if is_text(x):
        raise ArgumentTypeError(error_message(
            argument, "a tensor of numbers (or a number)", f"{argument}={x!r} of type {type(x).__name__}",
            "Pass a NumPy array, a backend tensor or a Python number."))
    x = ops.convert_to_tensor(x)
    if keras.backend.is_float_dtype(x.dtype):
        return x
    check_real(x, argument)
    return ops.cast(x, "float32")


def the_channel_axis(axis: object, ndim: int, owner: str = "a per-channel norm") -> int:
    """``axis`` as the one non-negative channel axis of a rank-``ndim`` input (see :func:`single_axis`)."""
    return canonicalize_axes(single_axis(axis, owner), ndim)[0]


def canonicalize_axes(
    axis: Axis, ndim: int, *, argument: str = "axis", allow_batch: bool = False
) -> list[int]:
    """Validates ``axis`` against a rank and returns sorted non-negative axes.

    Raises if an axis is out of range, repeated, or (unless ``allow_batch``)
    is the batch axis 0.
    """
    axes = as_axis_list(axis, argument=argument)
    if not allow_batch and ndim < 2:
        raise ValueError(
            error_message("inputs", "a tensor of rank >= 2: a batch axis, then the features",
                          f"an input of rank {ndim}", "Add a batch axis, e.g. x[None] for one sample.")
        )
    resolved = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise _axes_error(argument, axis, ndim, f"axes in [-{ndim}, {ndim - 1}] for an input of rank {ndim}",
                              "Check the input's rank; axis=-1 is the last (channels-last) axis.")
        resolved.append(a % ndim)
    if len(set(resolved)) != len(resolved):
        raise _axes_error(argument, axis, ndim, "distinct axes", "Remove the repeated axis.")
    if not allow_batch and 0 in resolved:
        raise _axes_error(argument, axis, ndim, "feature axes other than the batch axis 0",
                          "Normalization statistics are never shared across the batch axis this way; "
                          "use axis=-1 for channels-last or axis=1 for channels-first inputs.")
    return sorted(resolved)


def _axes_error(argument: str, axis: object, ndim: int, expected: str, fix: str) -> ValueError:
    return ValueError(error_message(argument, expected, f"{argument}={axis!r} for an input of rank {ndim}", fix))


def complement(axes: Sequence[int], ndim: int, *, keep_batch: bool = False) -> list[int]:
    """All axes of a rank-``ndim`` tensor that are not in ``axes``."""
    skip = set(axes) | ({0} if keep_batch else set())
    return [a for a in range(ndim) if a not in skip]


def known_dims(shape: Shape, axes: Sequence[int], *, argument: str = "axis", axis: Axis | None = None,
               reason: str = "the weights depend on it") -> list[int]:
    """Returns the static sizes of ``shape`` at ``axes``; each must be known (``reason`` says why)."""
    dims = []
    for a in axes:
        size = shape[a]
        if size is None:
            raise ValueError(
                error_message(
                    argument,
                    f"feature axes with a known size, since {reason}",
                    f"{argument}={axis if axis is not None else a!r} and input shape "
                    f"{tuple(shape)} (axis {a} has unknown size None)",
                    "Give that dimension a fixed size in keras.Input(shape=...), "
                    "or choose another axis.",
                )
            )
        dims.append(int(size))
    return dims


def is_traced_int(size: object) -> bool:
    """Whether a size is a Python int or a torch ``SymInt`` (a dynamic size
    under ``torch.compile``; checked by name, so torch is not imported):
    arithmetic on it stays symbolic, where a cast to a tensor would
    specialize a compiled graph to its value. False for a tensor size
    (TensorFlow's unknown dimensions)."""
    return isinstance(size, int) or type(size).__name__ == "SymInt"


def dims(x: Tensor) -> list[Any]:
    """The shape of ``x`` with unknown (graph-mode) sizes as scalar tensors."""
    static = list(x.shape)
    if all(d is not None for d in static):
        return static
    dynamic = ops.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def feature_param(
    param: Tensor | None, ndim: int, axes: Sequence[int], feature_shape: Sequence[int]
) -> Tensor | None:
    """Reshapes a parameter of ``feature_shape`` so it broadcasts on ``axes`` of a rank-``ndim`` input."""
    if param is None:
        return None
    param = ops.convert_to_tensor(param)
    if len(param.shape) == ndim:
        return param
    shape = [1] * ndim
    for a, d in zip(axes, feature_shape):
        shape[a] = d
    return ops.reshape(param, shape)


def channel_axis(x: Tensor, axis: Axis) -> tuple[int, int, int]:
    """``(rank, channel axis, channels)`` of ``x`` for a per-channel op."""
    ndim = len(x.shape)
    a = the_channel_axis(axis, ndim)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    return ndim, a, channels


def per_channel(param: Tensor | None, ndim: int, a: int, channels: int) -> Tensor | None:
    """A per-channel parameter ``(C,)`` reshaped to broadcast on axis ``a``."""
    return feature_param(param, ndim, [a], [channels])


def grouped_dims(x: Tensor, a: int, groups: int, channels: int) -> tuple[list[Any], list[Any]]:
    """``(dims, grouped)``: the shape of ``x`` and its shape with the channel
    axis ``a`` split into ``(groups, channels // groups)``."""
    shape = dims(x)
    return shape, shape[:a] + [groups, channels // groups] + shape[a + 1:]


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
    unknown = [a for a in axes if (x.shape[a] is None and batch_statistics) or _may_be_empty(x.shape[a])
               or (isinstance(x.shape[a], int) and x.shape[a] == 0)]  # (a known 0: a statistic of shape 1)
    if unknown:
        index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(ndim))
        sample = ops.pad(sample, [(0, 1) if a in unknown else (0, 0) for a in range(ndim)])[index]
    return sample


def scalar(value: Any, dtype: Any) -> Tensor:
    """A Python number (or a torch ``SymFloat``) as a 0-d tensor of ``dtype``.

    It is a zero plus the number: the backend's own operator converts the
    number in the tensor's dtype (TensorFlow's cast of a number would round it
    through float32 first), and on torch it makes no tensor of it on the host
    (``ops.convert_to_tensor``, and every Keras op given a number, would, then
    copy it to the device: a blocking copy on a GPU). ``torch.compile``
    traces a ``SymFloat`` into the sum. A NumPy number becomes a Python one
    first (JAX types a NumPy float64 strongly: float32 data would be
    computed in float64 under ``jax_enable_x64``).
    """
    return ops.zeros((), dtype=dtype) + python_number(value)


def python_number(value: Any) -> Any:
    """A NumPy number as the Python number of its value; anything else as it is."""
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    return value


def zero_of(x: Tensor) -> Tensor:
    """A 0-d zero of ``x``'s dtype, for ``ops.where(c, x, zero_of(x))``:
    ``where`` broadcasts it, where ``zeros_like(x)`` fills a tensor of ``x``'s
    size (one more pass over memory on eager torch; a Python 0.0 would
    promote float16 to float32 on some backends)."""
    return ops.zeros((), dtype=x.dtype)


#: The position :func:`first_kept` gives a slice that keeps nothing (int32's largest).
NOTHING_KEPT = 2**31 - 1

#: :func:`first_kept` gathers from inputs of at least this many elements: below,
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
    along ``a`` itself where ``jax.export`` may find it empty."""
    index = tuple(slice(None) if i == a else slice(0, 1) for i in range(len(x.shape)))
    line = x[index]
    unsure = [i for i, d in enumerate(x.shape) if (i != a and d is None) or _may_be_empty(d)]
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


def first_kept(x: Tensor, kept: Tensor, axes: list[int]) -> Tensor:
    """The first element of each slice (in row-major order over ``axes``) that
    ``kept`` (bool, of ``x``'s rank, full-size along ``axes``, size 1 or
    ``x``'s elsewhere) selects, 0 where it selects none; reduced axes kept.

    The first kept position is a minimum over the positions. Where ``kept``
    is the same for every slice (a Keras mask of ``(batch, time, 1)`` for
    batch statistics over the batch and time of ``(batch, time, C)``), the
    reduced sizes are known and ``x`` is large (:data:`GATHER_MIN_ELEMENTS`),
    that position is one index, and the element is gathered there (one take
    from consecutive axes viewed as one, else a slab along each reduced axis
    in turn): nothing of ``x``'s size is read. Otherwise (a position per
    slice, a reduced size known only at run time, or a torch trace) the
    element is a sum in which every other term is 0. Both are exact, so a
    value XLA recomputes in each fusion is the same value.
    """
    shape, axes = dims(x), sorted(axes)
    if any(x.shape[a] == 0 for a in axes):  # an empty slice: nothing to take
        return ops.zeros([1 if a in axes else d for a, d in enumerate(shape)], x.dtype)
    position: Any = None
    for a in axes:  # the positions along a, counted on a line of x (an exporter's symbolic size has no arange)
        position = _along(x, a) if position is None else position * shape[a] + _along(x, a)
    # (Not full_like: Keras' torch backend fills from a device tensor, which torch reads on the host.)
    candidates = ops.where(kept, position, scalar(NOTHING_KEPT, position.dtype))
    if keras.backend.backend() == "tensorflow":  # Keras' min asserts a nonempty tensor (a batch of 0 in a graph)
        import tensorflow as tf

        first = tf.reduce_min(candidates, axis=axes, keepdims=True)
    elif any(_may_be_empty(x.shape[a]) for a in axes):  # (jax.export: a min needs its identity; jax2onnx takes none)
        import jax.numpy as jnp

        first = jnp.min(candidates, axis=tuple(axes), keepdims=True, initial=NOTHING_KEPT)
    else:
        first = ops.amin(candidates, axis=axes, keepdims=True)
    static = [x.shape[a] for a in axes if isinstance(x.shape[a], int)]
    uniform = all(kept.shape[a] == 1 for a in range(len(shape)) if a not in axes)
    large = math.prod([d for d in x.shape if isinstance(d, int)]) >= GATHER_MIN_ELEMENTS  # (a generator breaks dynamo)
    # (Under a torch trace sizes may be symbolic, which the gather's index arithmetic cannot take.)
    if not (uniform and large and len(static) == len(axes)) or _torch_traced():
        return ops.sum(ops.where(position == first, x, zero_of(x)), axis=axes, keepdims=True)
    reduced, keep = math.prod(static), [1 if a in axes else d for a, d in enumerate(shape)]
    found = first < NOTHING_KEPT
    rest = ops.reshape(ops.minimum(first, scalar(reduced - 1, first.dtype)), [1])
    lo, hi = axes[0], axes[-1]
    if hi - lo + 1 == len(axes):  # consecutive axes: one take from a view of them as one axis
        sample = ops.reshape(ops.take(ops.reshape(x, shape[:lo] + [reduced] + shape[hi + 1:]), rest, axis=lo), keep)
    else:
        sample = x
        for a in reversed(axes):  # the position's index along each axis, the last axis first
            sample = ops.take(sample, rest % shape[a], axis=a)
            rest = rest // shape[a]
    return ops.where(found, sample, ops.zeros_like(sample))


def _may_be_empty(size) -> bool:
    """Whether ``size`` is symbolic (``jax.export``) and not provably positive."""
    if size is None or isinstance(size, int) or not type(size).__module__.startswith("jax"):
        return False
    try:
        return not size >= 1
    except Exception:  # jax.errors.InconclusiveDimensionOperation: it may be 0
        return True


def positive(size: Any) -> Any:
    """``size > 0`` for a size from :func:`keras.ops.shape`: a Python bool
    where it is known, else a boolean scalar tensor (TensorFlow's unknown
    size; a ``jax.export`` symbolic size that may be 0, as its value)."""
    if _may_be_empty(size):
        import jax.numpy as jnp

        return jnp.asarray(size) > 0
    return size > 0
