"""Checks of the tensors an op is given besides its input: per-feature
parameters (``gamma``, ``beta``, ``tau``, ...) and given statistics (a moving
mean, a renorm standard deviation, mixing logits).

Each is numbers, one per feature, or one number broadcast to all: a
string, a boolean (``beta=True`` where a layer's ``center=True`` was meant
would shift every output by 1) and a complex number (a cast would drop its
imaginary part) are refused, as the other argument checks refuse a wrong
value (:mod:`normlab.ops.validate`).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from normlab.ops.validate import ArgumentTypeError, error_message, is_number_dtype
from normlab.types import Tensor


def _not_real(value: object) -> bool:
    """Whether a host value (a number, a NumPy scalar or array, a list or
    tuple of them) holds a boolean or a complex number; a tensor is never
    read (its dtype is checked once converted)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "bc"
    if isinstance(value, (list, tuple)):
        return any(_not_real(v) for v in value)
    return isinstance(value, numbers.Number) and not isinstance(value, numbers.Real)


def not_real(value: object) -> bool:
    """Whether ``value`` holds booleans or complex numbers: a host value
    (:func:`_not_real`) or a tensor of that dtype (never read)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not isinstance(value, (np.ndarray, np.generic)):
        from keras.backend import standardize_dtype

        try:
            name = standardize_dtype(dtype)
        except ValueError:  # (an object dtype: refused where it is converted)
            return False
        return name == "bool" or "complex" in name
    return _not_real(value)


def check_param(name: str, param: Tensor | float | Sequence[float] | None,
                expected_shape: Sequence[int], dtype: str | None = None, *,
                meaning: str = "the normalized feature dimensions", per: str = "feature",
                required: bool = False) -> Tensor | None:
    """``param`` as a tensor of ``expected_shape``: None stays None (an error
    where ``required``), a scalar (a number or a 0-d tensor) is broadcast to
    that shape, anything else that ``keras.ops.convert_to_tensor`` takes must
    have it. Numbers and lists are made in ``dtype`` where given (the op's
    statistics dtype: float64 data keeps their digits). Strings, booleans and
    complex numbers are refused."""
    example = f"ones of shape {tuple(expected_shape)}"
    if param is None:
        if required:
            raise ArgumentTypeError(error_message(
                name, f"a tensor of shape {tuple(expected_shape)} ({meaning})", f"{name}=None",
                f"Pass one value per {per}, e.g. {example}."))
        return None
    from keras import ops

    # The usual case, a tensor (or variable) of the right rank, is taken as it is.
    keep = len(getattr(param, "shape", ())) == len(expected_shape) != 0

    def not_numbers() -> ArgumentTypeError:  # built only on failure: repr(param) reads its values
        return ArgumentTypeError(error_message(
            name, "a number or a tensor of numbers", f"{name}={param!r} of type {type(param).__name__}",
            f"Pass one value per {per}, e.g. {example}: real numbers, not booleans or complex numbers."))

    if isinstance(param, (str, bytes)) or _not_real(param):
        raise not_numbers()
    host = dtype is not None and isinstance(param, (numbers.Number, list, tuple))  # (NumPy's scalars are Numbers)
    try:
        tensor: Tensor = param if keep else ops.convert_to_tensor(param, dtype if host else None)
    except (TypeError, ValueError) as exc:
        raise not_numbers() from exc
    if not is_number_dtype(tensor.dtype):
        raise not_numbers()
    shape = tuple(tensor.shape)
    if len(shape) == 0:
        return ops.broadcast_to(tensor, tuple(expected_shape))
    if shape != tuple(expected_shape):
        raise ValueError(
            error_message(
                name,
                f"a tensor of shape {tuple(expected_shape)} ({meaning})",
                f"{name}.shape={shape}",
                f"Pass one value per {per}, e.g. {example}.",
            )
        )
    return tensor
