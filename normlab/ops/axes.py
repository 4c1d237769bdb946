"""Axis and shape handling: user ``axis`` arguments as validated, sorted lists,
static-or-dynamic shapes, and parameters reshaped to broadcast on feature axes.

Convention: axis 0 is the batch axis, and no normalization in normlab
chooses it as a feature axis. Negative axes count from the end.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Sequence

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


def as_tensor(x: Any) -> Tensor:
    """``ops.convert_to_tensor(x)``, except that a torch tensor already on
    Keras' device is returned as it is: Keras' conversion would record a
    no-op ``x.to(device)`` in every trace (a ``Cast`` per input in exported
    ONNX graphs; :func:`normlab.backends.torch_tensor_in_place`)."""
    from normlab import backends  # (here: backends' modules import this one)

    return x if backends.torch_tensor_in_place(x) else ops.convert_to_tensor(x)


def float_tensor(x: Tensor, argument: str = "x") -> Tensor:
    """``x`` as a tensor the ops compute on: float dtypes as given, integers and
    bools (uint8 images, say) cast to float32, never truncated back; a complex
    tensor, None and text (strings, alone or in an array or list) are refused, naming ``argument``."""
    if x is None or is_text(x):
        raise ArgumentTypeError(error_message(
            argument, "a tensor of numbers (or a number)", f"{argument}={x!r} of type {type(x).__name__}",
            "Pass a NumPy array, a backend tensor or a Python number."))
    x = as_tensor(x)
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
        dims.append(int(size) if not _traced_size(size) else _trace_time_int(size))
    return dims


def static_shape(shape: Sequence[Any]) -> tuple:
    """``shape`` as a tuple, each size that TorchScript's tracer gives as a
    0-d tensor read as the int it holds while tracing (see
    :func:`_trace_time_int`); other sizes as given."""
    return tuple(_trace_time_int(d) if _traced_size(d) else d for d in shape)


def _traced_size(size: object) -> bool:
    """Whether a size is a torch tensor: TorchScript's tracer (``torch.jit.trace``,
    the ONNX and OpenVINO exporters) gives every size as one."""
    return type(size).__name__ == "Tensor" and type(size).__module__.startswith("torch")


def _trace_time_int(size: Any) -> int:
    """A traced size as the int it holds now, fixed in the trace. Only for
    sizes that weights pin (channels) and for decisions that hold at every
    size (which axes broadcast); the tracer's warning that the trace may not
    generalize is silenced, since for these it does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(size)


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


#: :func:`along_short_rows` spreads a statistic along trailing reduced axes of fewer elements than this.
SHORT_ROW = 128


def along_short_rows(stat: Tensor, x: Tensor, axes: Sequence[int]) -> Tensor:
    """``stat`` (statistics of ``x`` with the reduced ``axes`` kept as size 1)
    broadcast along the reduced axes that end ``x`` where they hold fewer than
    :data:`SHORT_ROW` elements and the statistics vary along an axis ahead of
    them that follows reduced axes of 8 elements or more (so the result stays
    an eighth of ``x`` at most):
    channels-last group norm's ``(N, 1, 1, G, 1)`` becomes ``(N, 1, 1, G, C/G)``.

    The same values, so nothing changes but the layout an operation with
    ``x`` broadcasts: a runtime that broadcasts by rows then meets whole rows.
    onnxruntime subtracted a ``(1, 1, 1, 32, 1)`` tensor from ``(1, 56, 56, 32,
    2)`` in 1.1 ms, the spread ``(1, 1, 1, 32, 2)`` one in 66 us (4x faster
    for rows of 8, 1.5x for 32)."""
    rank, axes = len(x.shape), sorted(a % len(x.shape) for a in axes)
    run = [a for i, a in enumerate(axes) if axes[i:] == list(range(a, rank))]
    def known(sizes: list[Any]) -> bool:  # (None: a graph's; a traced or symbolic size: compared, it would guard)
        return all(isinstance(d, int) for d in sizes)

    sizes = [x.shape[a] for a in run]
    if not run or not known(sizes) or math.prod(sizes) >= SHORT_ROW:
        return stat
    ahead = [a for a in range(run[0]) if a not in axes and x.shape[a] != 1]  # where the statistics vary
    before = [x.shape[a] for a in axes if ahead and a < ahead[-1]]  # reduced axes ahead of those
    if not before or (known(before) and math.prod(before) < 8):  # (the spread one would be near x's size)
        return stat
    # Off the run, stat keeps its own size: 1, or 0 for an empty slice, whose statistics
    # keep its size (known sizes of 0 returned above; a graph's unknown size may be 0 at
    # run time; torch and JAX trace symbolic sizes as at least 1).
    shape, own = dims(x), dims(stat) if None in stat.shape else [1] * rank
    return ops.broadcast_to(stat, [shape[a] if a not in axes or a in run else own[a] for a in range(rank)])


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


def may_be_empty(size: Any) -> bool:
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
    if may_be_empty(size):
        import jax.numpy as jnp

        return jnp.asarray(size) > 0
    return size > 0
