"""Dynamic Tanh (Zhu et al., 2025): a normalization layer's replacement without statistics."""

from __future__ import annotations

import numbers

from keras import ops

from normlab.ops.arith import tanh
from normlab.ops.axes import feature_param, scalar
from normlab.ops.layer_norm import feature_axes_arguments
from normlab.ops.moments import stats_dtype
from normlab.ops.validate import ArgumentTypeError, check_real, error_message, is_number_dtype
from normlab.types import Axis, Tensor


def check_alpha(alpha: object) -> None:
    """Raises unless ``alpha`` is a positive finite number or a tensor of one value."""
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        check_real("alpha", alpha, minimum=0.0, strict=True, example="0.5")
        return
    shape = getattr(alpha, "shape", None)
    dtype = getattr(alpha, "dtype", None)
    if shape is None or dtype is None or not is_number_dtype(dtype):  # (a bool, complex or text tensor too)
        raise ArgumentTypeError(
            error_message("alpha", "a positive float or a tensor holding one value",
                          f"alpha={alpha!r} of type {type(alpha).__name__}", "Pass a float such as alpha=0.5.")
        )
    if tuple(shape) not in ((), (1,)):
        raise ValueError(
            error_message("alpha", "one value: a scalar or a tensor of shape (1,)", f"alpha.shape={tuple(shape)}",
                          "Dynamic Tanh learns a single alpha per layer; for one per feature fold it into gamma.")
        )


def dynamic_tanh(
    x: Tensor, alpha: Tensor | float = 0.5, axis: Axis = -1, *, gamma: Tensor | None = None,
    beta: Tensor | None = None,
) -> Tensor:
    """Dynamic Tanh: squashes each element with ``tanh(alpha * x)``, no statistics.

    Formula: ``y = tanh(alpha * x) * gamma + beta``, with one scalar
    ``alpha`` and ``gamma`` and ``beta`` of the shape of ``x`` at ``axis``
    (the axes a LayerNormalization it replaces would normalize over).
    Nothing is reduced: each output depends on its own input only, so the
    result is the same for any batch size, sequence length or layout. It
    is computed in float32 at least and cast back to the dtype of ``x``.

    Args:
        x: input of rank >= 2, batch first.
        alpha: the scale inside the tanh, a positive float or a tensor of
            shape ``()`` or ``(1,)`` (a layer's learned weight). Default 0.5
            (the paper's initial value for non-LLM models).
        axis: an int or a list of ints, never the batch axis: where ``gamma``
            and ``beta`` apply. Default -1.
        gamma: optional scale of shape ``[x.shape[a] for a in sorted(axis)]`` (axes in ascending order). Default None.
        beta: optional offset of the same shape. Default None.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import dynamic_tanh
        >>> x = np.array([[-4.0, 0.0, 1.0, 100.0]], "float32")
        >>> ops.convert_to_numpy(dynamic_tanh(x, alpha=0.5)).astype("float64").round(4).tolist()
        [[-0.964, 0.0, 0.4621, 1.0]]

    Reference:
        Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization",
        CVPR 2025. https://arxiv.org/abs/2503.10622
    """
    check_alpha(alpha)
    x, axes, feature_shape, _, gamma, beta = feature_axes_arguments(x, axis, gamma, beta, 0.0)
    ndim, dtype = len(x.shape), stats_dtype(x.dtype)
    # A number by the backend's operator (no tensor made of it: see axes.scalar); alpha (1,) broadcasts.
    alpha = scalar(alpha, dtype) if isinstance(alpha, numbers.Real) else ops.convert_to_tensor(alpha, dtype)
    y = tanh(ops.cast(x, dtype) * alpha)
    gamma = feature_param(gamma, ndim, axes, feature_shape)
    beta = feature_param(beta, ndim, axes, feature_shape)
    if gamma is not None:
        y = y * ops.cast(gamma, dtype)
    if beta is not None:
        y = y + ops.cast(beta, dtype)
    return ops.cast(y, x.dtype)
