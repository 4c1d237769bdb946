"""The apply step shared by every norm: ``(x - mean) * rsqrt(var + eps) * gamma + beta``."""

from __future__ import annotations

import numbers

import numpy as np
from keras import ops

from normlab import backends
from normlab.ops.axes import float_tensor, python_number, scalar, static_shape
from normlab.ops.moments import stats_dtype
from normlab.ops.params import not_real
from normlab.ops.validate import ArgumentTypeError, check_epsilon, error_message
from normlab.types import Tensor


def inverse_std(variance: Tensor, epsilon: float) -> Tensor:
    """``rsqrt(variance + epsilon)``; with ``epsilon == 0``, 0 where the variance is 0.

    A slice with no spread has ``x - mean == 0``: with ``epsilon > 0`` it
    normalizes to 0 (then ``beta``), and ``epsilon=0`` keeps that result
    instead of ``0 * inf = NaN``. The guard costs nothing for ``epsilon > 0``
    (decided on the Python float, never on tensor values), and its gradient
    is finite (``rsqrt`` never sees 0).
    """
    if epsilon > 0:
        return ops.rsqrt(variance + epsilon)
    positive = ops.cast(variance > 0, variance.dtype)
    return ops.rsqrt(variance + (1.0 - positive)) * positive


def _static_shape(t: Tensor) -> tuple | None:
    """``t``'s shape as a tuple, or None where even its rank is unknown (a TensorFlow graph)."""
    try:
        return static_shape(t.shape)
    except ValueError:
        return None


def _broadcasts_to(name: str, value: Tensor, shape: tuple | None) -> None:
    """Raises unless ``value``'s shape broadcasts to ``shape`` without growing it:
    no more dimensions, each 1 or the same (unknown sizes and ranks pass, and
    a torch trace is not checked)."""
    given = _static_shape(value)
    # (Under torch's tracers symbolic sizes pass for ints, and comparing two it
    # cannot prove equal is a graph break.)
    if shape is None or given is None or backends.torch_traced():
        return
    aligned = zip(reversed(given), reversed(shape))
    if len(given) <= len(shape) and all(g in (1, s) or g is None or s is None for g, s in aligned):
        return
    raise ValueError(error_message(
        name, f"a tensor broadcastable to x's shape {shape} (each dimension 1 or x's)",
        f"{name} of shape {given}",
        "Keep the reduced axes as size-1 dimensions, e.g. moments(x, axes, keepdims=True)."))


def check_variance(variance: object, name: str = "variance") -> None:
    """Raises for a given variance below 0 where it is a host value (a Python
    number or a NumPy array): read without a device sync. (A tensor's values
    are never read: a negative one gives NaN there.)"""
    check_non_negative(
        variance, name, "a non-negative variance (its square root scales the output)",
        "Pass a variance, not a standard deviation or log-variance; moving statistics "
        "come from the layer's moving_variance or moments().")


def check_stddev(stddev: object, name: str) -> object:
    """``stddev``, once checked to be at least 0 where it is a host value (as :func:`check_variance`)."""
    return check_non_negative(
        stddev, name, "a non-negative standard deviation (the batch's is divided by it)",
        "Pass a standard deviation, sqrt(variance + epsilon) (a renorm layer's renorm_stddev), "
        "not a log-standard-deviation.")


def check_non_negative(value: object, name: str, expected: str, fix: str) -> object:
    """``value``, once checked to be at least 0 where it is a host value (a
    Python number, a NumPy array or scalar, or a list of numbers; a tensor's
    values are never read)."""
    if type(value) in (float, int):  # (no NumPy: a compiler traces a Python number as it is)
        if value < 0:  # type: ignore[operator]
            raise ValueError(error_message(name, expected, f"{name}={value}", fix))
    elif isinstance(value, (np.ndarray, np.floating, np.integer)) or _numbers_list(value):
        try:
            values = np.asarray(value).reshape(-1)
        except ValueError:  # a ragged list: refused by shape where it is converted
            return value
        negative = values[values < 0]
        if negative.size:
            raise ValueError(error_message(
                name, expected, f"{name}={float(negative[0])}" if values.size == 1 else
                f"{name} with {negative.size} negative value(s) of {values.size}, e.g. {float(negative[0])}", fix))
    return value


def _numbers_list(value: object) -> bool:
    """Whether ``value`` is a list or tuple of numbers (nested or not), held on the host."""
    if not isinstance(value, (list, tuple)):
        return False
    return all(_numbers_list(v) or (isinstance(v, numbers.Real) and not isinstance(v, bool)) for v in value)


def normalize(
    x: Tensor,
    mean: Tensor,
    variance: Tensor,
    *,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    epsilon: float = 1e-3,
    shift: Tensor | None = None,
) -> Tensor:
    """Normalizes ``x`` with given statistics, then scales and shifts it.

    Formula: ``y = (x - mean) * rsqrt(variance + epsilon) * gamma + beta``,
    computed in float32 at least and cast back to the dtype of ``x``; a
    slice with zero variance gives ``beta`` even with ``epsilon=0``
    (:func:`inverse_std`).
    ``x - mean`` is formed before scaling, so a large common offset cancels
    exactly instead of being scaled first; with ``shift`` (from
    :func:`~normlab.ops.moments.shifted_moments`), ``mean`` is relative to
    it and ``(x - shift) - mean`` keeps every bit of the residual.

    Args:
        x: input tensor.
        mean: tensor broadcastable to ``x`` (e.g. from :func:`moments` with
            ``keepdims=True``).
        variance: tensor broadcastable to ``x``, non-negative.
        gamma: optional scale, broadcastable to ``x``. Default None (1).
        beta: optional offset, broadcastable to ``x``. Default None (0).
        epsilon: added to the variance. Default 1e-3.
        shift: optional tensor broadcastable to ``x`` that ``mean`` is
            relative to. Default None (``mean`` is the mean of ``x``).

    Returns:
        A tensor with the shape of ``x``, in its dtype (float32 for an
        integer or bool ``x``).

    Raises:
        ValueError: a statistic or parameter does not broadcast to the shape of ``x``.
        TypeError: a complex ``x``, statistic or parameter.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import normalize
        >>> x = np.array([[1.0, 3.0]], "float32")
        >>> y = normalize(x, np.float32(2.0), np.float32(1.0), epsilon=0.0)
        >>> ops.convert_to_numpy(y).tolist()
        [[-1.0, 1.0]]
    """
    x = float_tensor(x)
    check_variance(variance)
    shape = _static_shape(x)
    given = {"mean": mean, "variance": variance, "gamma": gamma, "beta": beta, "shift": shift}
    for name, value in given.items():
        if (value is None and name in ("mean", "variance")) or (value is not None and not_real(value)):
            raise ArgumentTypeError(error_message(
                name, "a number or a tensor of numbers (None for gamma, beta and shift only)",
                f"{name}={value!r}", "Pass the statistic, e.g. from normlab.ops.moments(x, axes, keepdims=True)."
                if value is None else "Pass real numbers, not booleans or complex numbers."))
        # (A Python number stays one: torch.compile(dynamic=True) traces it as a SymFloat,
        # which Keras' convert_to_tensor cannot take without a graph break.)
        if value is not None and not isinstance(value, numbers.Real):
            given[name] = value = float_tensor(value, name)
            _broadcasts_to(name, value, shape)
    mean, variance, gamma, beta, shift = given.values()
    out_dtype = x.dtype
    dtype = stats_dtype(x.dtype)
    inv = inverse_std(_in_dtype(variance, dtype, tensor=True), check_epsilon(epsilon))
    gamma = None if gamma is None else _in_dtype(gamma, dtype)
    # The scale folds into the statistics (one product per channel: batch,
    # group norm) unless that product is as large as x (per row times per
    # feature: layer, RMS norm), whose gradient XLA then keeps as another
    # full-size array; gamma multiplies the normalized data then.
    late = gamma is not None and _spans(inv, gamma, shape)
    if gamma is not None and not late:
        inv = inv * gamma
    x = ops.cast(x, dtype)
    if shift is not None:
        x = x - _in_dtype(shift, dtype)
    # x + (mean * -1) has the bits of x - mean, and exporters' converters fold
    # an addition of a constant into a preceding Dense/Conv's bias (LiteRT
    # folds no subtraction): with given statistics the whole apply step then
    # folds into that layer, as Keras' batch norm does. A mean of 0 (RMS
    # norm) subtracts nothing: x + -0.0 is x, bit for bit.
    y = (x if _is_zero(mean) else x + _in_dtype(mean, dtype) * -1.0) * inv
    if late:
        y = y * gamma
    if beta is not None:
        y = y + _in_dtype(beta, dtype)
    return ops.cast(y, out_dtype)


def _is_zero(value: Tensor | float) -> bool:
    """Whether ``value`` is the Python number 0 (never reads a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _spans(a: Tensor, b: Tensor | float, shape: tuple | None) -> bool:
    """Whether ``a * b`` has the full ``shape`` (of ``x``) where neither has it
    alone: they vary along different axes (per row and per feature). Static
    shapes only (an unknown size matches an unknown size); a number spans
    nothing."""
    if isinstance(b, numbers.Real) or shape is None:
        return False
    sa, sb = _static_shape(a), _static_shape(b)
    if sa is None or sb is None:
        return False
    rank = len(shape)
    if max(len(sa), len(sb)) > rank:
        return False
    sa, sb = (1,) * (rank - len(sa)) + sa, (1,) * (rank - len(sb)) + sb
    product = tuple(n if m == 1 else m for m, n in zip(sa, sb))
    return product == tuple(shape) and sa != product and sb != product


def _in_dtype(value: Tensor | float, dtype: str, tensor: bool = False) -> Tensor | float:
    """A statistic or parameter in the compute dtype. A Python number stays one
    in arithmetic with a tensor (no tensor made of it on the host: see
    :func:`normlab.ops.axes.scalar`), and becomes a 0-d tensor where one is needed (``tensor``)."""
    if isinstance(value, numbers.Real):
        return scalar(value, dtype) if tensor else python_number(value)
    return ops.cast(value, dtype)
