"""Argument checks shared by ops and layers.

Every check raises ``ValueError`` (``TypeError`` for a wrong type) with the
same four parts: the argument, what was expected, ``Received: arg=value``,
and how to fix it. Checks that do not depend on shapes run in ``__init__``;
those that do run in ``build`` (layers) or at call time (ops).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Literal, overload

import numpy as np

from normlab.types import Axis, RenormClipping, Shape


def is_finite(value: object) -> bool:
    """``math.isfinite`` by comparisons alone (False for NaN and both infinities).

    Under ``torch.compile(dynamic=True)`` a float argument is traced as a
    ``SymFloat``: comparisons on it are guards, but ``math.isfinite`` is a
    graph break, which ``fullgraph=True`` turns into an error.
    """
    return -math.inf < value < math.inf  # type: ignore[operator]  # any real number, or a SymFloat


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError`` that is also a ``ValueError``.

    Keras raises ``ValueError`` for some wrong types (``groups=1.5``,
    ``groups="32"``) and ``TypeError`` for others; code written against
    either catches normlab's errors.
    """


def error_message(argument: str, expected: str, received: str, fix: str = "") -> str:
    """Formats the one error style normlab uses everywhere."""
    message = f"Invalid `{argument}`: expected {expected}. Received: {received}."
    if fix:
        message += f" {fix}"
    return message


def _suggest(owner: Callable[..., Any] | None, name: str, otherwise: str) -> str:
    """``such as epsilon=1e-06 (the default)``: the default of ``owner``'s (a layer's
    ``__init__``) parameter ``name``, read only when an error is raised."""
    parameter = inspect.signature(owner).parameters.get(name) if owner is not None else None
    if parameter is None or parameter.default is parameter.empty:
        return otherwise
    return f"such as {name}={parameter.default!r} (the default)"


def check_epsilon(epsilon: object, *, positive: bool = False, reason: str = "",
                  owner: Callable[..., Any] | None = None,
                  role: str = "it is added to the variance") -> float:
    """Returns ``epsilon`` as a float: finite, non-negative (``positive``: > 0).

    Zero is allowed where the norm defines the zero-variance case (a slice
    with no spread normalizes to 0, then ``beta``); norms whose formula
    divides by an uncentered quantity pass ``positive=True`` and a
    ``reason``.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise ArgumentTypeError(
            error_message(
                "epsilon",
                "a non-negative float",
                f"epsilon={epsilon!r} of type {type(epsilon).__name__}",
                "Pass a float such as epsilon=1e-3.",
            )
        )
    # Comparisons keep the number on the left with < and <=, the ones numbers.Real
    # guarantees; NaN passes them and is caught by isfinite.
    if (epsilon <= 0 if positive else epsilon < 0) or not is_finite(epsilon):
        bound = "a positive" if positive else "a non-negative"
        raise ValueError(
            error_message(
                "epsilon",
                f"{bound} float (finite; {role}{reason})",
                f"epsilon={epsilon!r}",
                f"Use a small positive value {_suggest(owner, 'epsilon', 'such as the default')}.",
            )
        )
    return float(epsilon)


def check_replica_sum(replica_sum: object) -> None:
    """Raises unless ``replica_sum`` is None or a callable (it is called on tensors,
    and ``3`` or ``"sum"`` would fail there with ``'int' object is not callable``)."""
    if replica_sum is not None and not callable(replica_sum):
        raise TypeError(error_message(
            "replica_sum", "None or a callable that sums a tensor over all replicas",
            f"replica_sum={replica_sum!r} of type {type(replica_sum).__name__}",
            "Pass normlab.distributed.replica_sum() (None outside a distribution strategy), or None."))


def check_mask(mask: object, shape: Shape) -> None:
    """Raises if ``mask``'s static shape cannot broadcast to ``shape`` (unknown sizes pass).

    Under a torch trace only the ranks: ``torch.compile(dynamic=True)`` gives
    the mask's and the input's sizes symbols of their own, which comparing
    them fails to relate (the eager call checks the sizes)."""
    from normlab.backends import torch_traced

    if mask is None:
        return
    text = is_text(mask)
    dtype = None if text else getattr(mask, "dtype", None)
    if dtype is None and not text:  # a list or a Python bool: NumPy's reading of it
        dtype = np.asarray(mask).dtype
    if dtype is None or not _is_real_dtype(dtype):  # text; objects (None, strings), complex numbers
        raise ArgumentTypeError(error_message(
            "mask", "a tensor of booleans or real numbers (nonzero keeps a position)",
            f"mask={mask!r}" if dtype is None else f"a mask of dtype {dtype}",
            "Pass a boolean tensor, e.g. the mask a Masking or Embedding(mask_zero=True) layer computes."))
    static = getattr(mask, "shape", None)
    try:
        mask_shape = tuple(np.shape(mask) if static is None else static)  # type: ignore[call-overload]
    except (TypeError, ValueError):  # a graph tensor of unknown rank
        return
    shape = tuple(shape)
    sizes = () if torch_traced() else zip(mask_shape[::-1], shape[::-1])
    fits = len(mask_shape) <= len(shape) and all(m is None or s is None or m in (1, s) for m, s in sizes)
    if not fits:
        keras_style = mask_shape == shape[:-1]
        raise ValueError(error_message(
            "mask", f"a tensor broadcastable to the input's shape {shape}",
            f"mask of shape {mask_shape}",
            "A Keras-style mask (the input's shape without its last axis) needs a trailing axis "
            "here: pass mask[..., None]." if keras_style else
            "Pass a mask of the input's shape, or one that broadcasts to it."))


def _is_real_dtype(dtype: Any, booleans: bool = True) -> bool:
    """Whether ``dtype`` holds real numbers or (where ``booleans``) booleans (not text, objects or complex numbers)."""
    from keras.backend import standardize_dtype

    try:
        name = standardize_dtype(dtype)
    except ValueError:  # NumPy's object dtype
        return False
    numbers_ = ("float", "bfloat", "int", "uint")
    return name.startswith((*numbers_, "bool") if booleans else numbers_)


def is_number_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` holds real numbers: not booleans, complex numbers, text or objects."""
    return _is_real_dtype(dtype, booleans=False)


def is_text(value: object) -> bool:
    """Whether ``value`` is text where numbers go: a string, an array or tensor of strings,
    or a list or tuple holding one (a backend would fail on it in its own conversion)."""
    if isinstance(value, (str, bytes)):
        return True
    dtype = getattr(value, "dtype", None)
    if dtype is not None:  # NumPy's (and JAX's) have a kind; TensorFlow's tf.string has a name
        kind = getattr(dtype, "kind", None)
        return kind in ("U", "S") if kind is not None else "string" in str(dtype)
    if isinstance(value, (list, tuple)):
        from keras import tree

        return any(isinstance(v, (str, bytes)) for v in tree.flatten(value))
    return False


def check_bools(**flags: object) -> tuple[bool, ...]:
    """:func:`check_bool` of each keyword argument, their values in order."""
    return tuple(check_bool(name, value) for name, value in flags.items())


def check_bool(name: str, value: object) -> bool:
    """Returns ``value`` if it is a bool (Python or NumPy); anything else is an error.

    ``bool(value)`` would take ``"no"``, ``"False"`` or ``0.5`` for True.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentTypeError(
        error_message(
            name,
            "a bool (True or False)",
            f"{name}={value!r} of type {type(value).__name__}",
            f"Pass {name}=True or {name}=False.",
        )
    )


def require_spatial(shape: Shape, owner: str, *, argument: str = "inputs", fix: str = "") -> None:
    """Raises unless ``shape`` has a spatial axis: rank >= 3, (batch, ..., channels).

    For the norms whose per-sample statistics run over the spatial axes,
    which a rank-2 ``(batch, features)`` input does not have (every slice
    would hold one element and normalize to 0).
    """
    if len(shape) < 3:
        label = "input_shape" if argument == "inputs" else f"{argument}.shape"
        raise ValueError(
            error_message(
                argument,
                f"an input of rank >= 3 (batch, spatial..., channels) for {owner}, which takes "
                "per-sample statistics over the spatial axes (a rank-2 input has none)",
                f"{label}={tuple(shape)}",
                fix or "Add a spatial axis, e.g. reshape (batch, features) to (batch, 1, features), "
                "or use LayerNormalization for (batch, features).",
            )
        )


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, for error messages that list the valid choices."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_groups(groups: object) -> int:
    """Checks the shape-independent part of ``groups``: a positive int or -1."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise ArgumentTypeError(
            error_message(
                "groups",
                "an integer (a positive number of groups, or -1 for one group per channel)",
                f"groups={groups!r} of type {type(groups).__name__}",
                "Pass an int such as groups=32, or groups=-1 for instance normalization.",
            )
        )
    if groups == 0 or groups < -1:
        raise ValueError(
            error_message(
                "groups",
                "a positive integer, or -1 for one group per channel",
                f"groups={groups}",
                "Use a divisor of the channel count, or groups=-1 for instance normalization.",
            )
        )
    return int(groups)


def resolve_groups(groups: int, channels: int, axis: Axis) -> int:
    """Returns the number of groups for ``channels`` channels (-1 -> channels; 1 for no channel)."""
    if groups == -1:
        return channels or 1  # (an input with no channel is one empty group, not 0 groups to divide by)
    if groups > channels:
        raise ValueError(
            error_message(
                "groups",
                f"at most the number of channels ({channels})",
                f"groups={groups} with {channels} channels (axis={axis})",
                f"Use a divisor of {channels}, or groups=-1 for instance normalization.",
            )
        )
    if channels % groups:
        raise ValueError(
            error_message(
                "groups",
                f"a divisor of the number of channels ({channels}), so that every "
                "group has the same number of channels",
                f"groups={groups} with {channels} channels (axis={axis})",
                f"Use one of {divisors(channels)}, or groups=-1 for instance normalization.",
            )
        )
    return groups


def check_momentum(momentum: object, owner: Callable[..., Any] | None = None) -> float:
    """Checks a moving-average momentum lies in [0, 1]."""
    # ``momentum < 0 or not momentum <= 1`` is ``not 0 <= momentum <= 1`` with the number on the
    # left (the comparisons numbers.Real guarantees); NaN fails ``momentum <= 1``.
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, numbers.Real)
        or momentum < 0
        or not momentum <= 1
    ):
        raise ValueError(
            error_message(
                "momentum",
                "a float in [0, 1], the weight kept by the moving average at each step "
                "(Keras convention; PyTorch's momentum m corresponds to 1 - m)",
                f"momentum={momentum!r}",
                f"Use a value {_suggest(owner, 'momentum', 'such as momentum=0.99')}.",
            )
        )
    return float(momentum)


def check_real(
    name: str, value: object, *, minimum: float | None = None, strict: bool = False, example: str = ""
) -> float:
    """Returns ``value`` as a float; a real number, optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            error_message(name, "a real number", f"{name}={value!r} of type {type(value).__name__}",
                          f"Pass a float such as {name}={example}.")
        )
    if not is_finite(value):
        raise ValueError(
            error_message(name, "a finite number", f"{name}={value!r}", f"Use a value such as {name}={example}.")
        )
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"{'>' if strict else '>='} {minimum}"
        raise ValueError(
            error_message(name, f"a number {bound}", f"{name}={value!r}", f"Use a value such as {name}={example}.")
        )
    return float(value)


@overload
def check_positive_int(
    name: str, value: object, *, example: int, allow_none: Literal[False] = ..., meaning: str = ...
) -> int: ...
@overload
def check_positive_int(
    name: str, value: object, *, example: int, allow_none: bool, meaning: str = ...
) -> int | None: ...
def check_positive_int(
    name: str, value: object, *, example: int, allow_none: bool = False, meaning: str = ""
) -> int | None:
    """Returns ``value`` as an int >= 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive integer" + (f" ({meaning})" if meaning else "")
        if allow_none:
            expected += " or None"
        raise ValueError(
            error_message(name, expected, f"{name}={value!r}", f"Pass an int such as {name}={example}.")
        )
    return int(value)


_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_renorm_clipping(clipping: object) -> RenormClipping:
    """Validates Keras' ``renorm_clipping`` dict; returns a copy with float values.

    Keys are optional: ``rmax`` (default inf), ``rmin`` (default 0) and
    ``dmax`` (default inf).
    """
    fix = "Pass a dict such as renorm_clipping={'rmax': 3.0, 'rmin': 1 / 3, 'dmax': 5.0}, or None."
    if clipping is None:
        return {}
    if not isinstance(clipping, dict) or set(clipping) - set(_CLIPPING_KEYS):
        raise ValueError(
            error_message("renorm_clipping", "None or a dict with keys among 'rmax', 'rmin', 'dmax'",
                          f"renorm_clipping={clipping!r}", fix)
        )
    out: RenormClipping = {}
    for key, value in clipping.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:  # NaN; see is_finite
            raise ValueError(
                error_message("renorm_clipping", f"a number for {key!r}", f"renorm_clipping={clipping!r}", fix)
            )
        out[key] = float(value)
    if out.get("dmax", 0.0) < 0:
        raise ValueError(
            error_message("renorm_clipping", "dmax >= 0 (d is clipped to [-dmax, dmax])",
                          f"renorm_clipping={clipping!r}", fix)
        )
    # r = 1 (batch statistics equal to the moving ones) must stay 1: clipped to rmax < 1 or rmin > 1, the
    # training output is scaled by it however well the moving statistics converge, and never matches inference.
    if not out.get("rmin", 0.0) <= 1.0 <= out.get("rmax", math.inf):
        raise ValueError(
            error_message("renorm_clipping", "rmin <= 1 <= rmax (defaults 0 and inf): r = std / moving std is "
                          "clipped to [rmin, rmax], and r = 1 must stay 1 or training outputs never match "
                          "inference", f"renorm_clipping={clipping!r}", fix)
        )
    return out
