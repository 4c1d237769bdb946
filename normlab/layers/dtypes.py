"""The dtype policy of normlab's layers.

Like Keras' own GroupNormalization and LayerNormalization, a normlab norm
does not autocast its input under mixed precision (``autocast = False``): a
float32 input reaches the statistics as float32, so values beyond
float16's range (65504) normalize to finite outputs instead of overflowing
to inf and NaN; the result is cast to the layer's compute dtype. An input
narrower than the compute dtype is widened to it (a float32 input to a
float64 layer computes in float64, as in Keras). Integer inputs (``uint8``
images straight from a dataset) are computed in float32 (in the variable
dtype where it is wider) and returned in the compute dtype, never truncated
back to integers. Weights are created with ``autocast=False``, so reading
them inside an ``AutocastScope("float16")`` never overflows either.
"""

from __future__ import annotations

from typing import Protocol

import keras
from keras import ops

from normlab.ops.axes import as_tensor, check_real
from normlab.ops.validate import error_message
from normlab.types import Tensor


class _HasDtypes(Protocol):
    """What :class:`FloatCompute` needs of the Keras layer it is mixed into."""

    @property
    def variable_dtype(self) -> str: ...

    @property
    def compute_dtype(self) -> str: ...


_FLOAT_BITS = {"float8_e4m3fn": 8, "float8_e5m2": 8, "float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def check_float_policy(layer: keras.layers.Layer) -> None:
    """Raises unless ``layer``'s dtype policy computes and stores in float dtypes.

    Keras' layers accept ``dtype="int32"``, then truncate every output and
    moving average to integers; a normalization has no integer meaning.
    """
    compute, variables = layer.compute_dtype, layer.variable_dtype  # a DTypePolicyMap's, by the layer's path
    if keras.backend.is_float_dtype(compute) and keras.backend.is_float_dtype(variables):
        return
    raise ValueError(error_message(
        "dtype", "a float dtype policy, such as 'float32', 'float64' or 'mixed_float16'",
        f"dtype={getattr(layer.dtype_policy, 'name', layer.dtype_policy)!r} (compute dtype {compute}, "
        f"variables {variables})",
        "Leave dtype out: integer inputs (uint8 images) are normalized in float32 anyway."))


class FloatCompute:
    """Mixin for layers that normalize: the dtype policy of this
    module's docstring (set ``self.autocast = False`` in ``__init__``, pass inputs
    through :meth:`float_input`, return through :meth:`compute_output`)."""

    def float_input(self: _HasDtypes, inputs: Tensor) -> Tensor:
        """``inputs`` as a tensor the ops compute on: float dtypes as given,
        or widened to a wider compute dtype (a float32 input to a float64
        layer computes in float64, as Keras' layers do), integers (e.g. uint8
        images) cast to the variable dtype, float32 at least (an int32 beyond
        65504 is inf in float16: its statistics would be NaN)."""
        inputs = as_tensor(inputs)
        bits = _FLOAT_BITS.get(keras.backend.standardize_dtype(inputs.dtype))
        if bits is not None:
            return ops.cast(inputs, self.compute_dtype) if bits < _FLOAT_BITS.get(self.compute_dtype, 0) else inputs
        check_real(inputs, "inputs")
        return ops.cast(inputs, self.variable_dtype if _FLOAT_BITS.get(self.variable_dtype, 0) > 32 else "float32")

    def compute_output(self: _HasDtypes, outputs: Tensor) -> Tensor:
        """The op's result in the layer's compute dtype (float16 under mixed precision)."""
        dtype = self.compute_dtype
        return outputs if keras.backend.standardize_dtype(outputs.dtype) == dtype else ops.cast(outputs, dtype)
