"""Arithmetic that keeps the operands' dtype on every backend.

Keras' torch backend computes ``ops.maximum`` and ``ops.minimum`` of two
float64 tensors in float32 (its type promotion reads torch's dtypes as
unknown): a count of 2**24 + 1 comes back as 2**24. Every op of normlab
that clamps a tensor takes these instead, and :func:`matmul` keeps float64
on torch as well. Keras' JAX backend computes
``ops.tanh`` of float64 data (under ``jax_enable_x64``) in float32:
:func:`tanh` keeps float64.
"""

from __future__ import annotations

import keras
from keras import ops

from normlab.ops.axes import scalar
from normlab.types import Tensor


def at_least(x: Tensor, floor: float) -> Tensor:
    """``maximum(x, floor)`` for a tensor and a Python number, in the tensor's dtype.

    The number is made a tensor first: ``torch.compile(dynamic=True)`` traces
    a float argument as a ``SymFloat``, which Keras' ``ops.maximum`` cannot
    take (it asks the number for a ``dtype``, a graph break).
    """
    return maximum(x, scalar(floor, x.dtype))


def at_most(x: Tensor, ceiling: float) -> Tensor:
    """``minimum(x, ceiling)`` for a tensor and a Python number (see :func:`at_least`)."""
    return minimum(x, scalar(ceiling, x.dtype))


def maximum(a: Tensor, b: Tensor) -> Tensor:
    """``ops.maximum`` of two tensors of one dtype, in that dtype: Keras'
    torch backend computes it in float32 for float64 tensors (its type
    promotion reads torch's dtypes as unknown)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.maximum(a, b)
    return ops.maximum(a, b)


def minimum(a: Tensor, b: Tensor) -> Tensor:
    """``ops.minimum`` of two tensors of one dtype, in that dtype (see :func:`maximum`)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.minimum(a, b)
    return ops.minimum(a, b)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``ops.matmul`` of two float tensors of one dtype, in that dtype: Keras'
    torch backend returns float32 for float64 operands (a power iteration's
    sigma 3.5e-9 off, where float64 promises 1e-16)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.matmul(a, b)
    return ops.matmul(a, b)


def tanh(x: Tensor) -> Tensor:
    """``ops.tanh`` in ``x``'s dtype: Keras' JAX backend computes it in float32
    for float64 data (a relative 5e-8 off, where float64 promises 1e-16)."""
    if keras.backend.backend() == "jax":
        import jax.numpy as jnp

        return jnp.tanh(x)
    return ops.tanh(x)
