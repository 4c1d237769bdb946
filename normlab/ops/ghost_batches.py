"""Ghost batches (Hoffer et al., 2017): a batch split into equal groups of
``virtual_batch_size`` samples, each normalized with its own statistics."""

from __future__ import annotations

import keras
from keras import ops

from normlab.ops.axes import dims
from normlab.ops.masks import mask_weight
from normlab.ops.sharding import ghost_merge, ghost_split, laid_out_as, split_axes
from normlab.ops.validate import divisors, error_message
from normlab.types import Tensor

_EXPECTED = "a divisor of the batch size, so that the batch splits into equal ghost batches"


def split_batch(x: Tensor, size: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``x`` as ``(batch // size, size, *x.shape[1:])``, and ``mask`` (if any)
    as float weights of that shape.

    A batch that ``size`` does not divide is an error: raised here where the
    batch size is known when the op runs or is traced, else (a TensorFlow
    graph's unknown batch, as in Keras' ``fit``, whose last batch may be
    smaller) by an assertion that runs with the graph. (Under XLA the
    assertion is compiled out and the reshape's own error remains.)
    """
    batch, shape = x.shape[0], dims(x)
    if isinstance(batch, int) and batch % size:
        raise ValueError(error_message(
            "virtual_batch_size", _EXPECTED, f"virtual_batch_size={size} with a batch of {batch}",
            f"Use one of {divisors(batch)}, or a batch size that is a multiple of {size} "
            "(e.g. drop the last, smaller batch)."))
    if batch is not None and not isinstance(batch, int) and not _divides(size, batch):
        raise ValueError(error_message(  # a symbolic size (jax.export) that need not be a multiple
            "virtual_batch_size", _EXPECTED, f"virtual_batch_size={size} with a symbolic batch size {batch}",
            f"Declare the batch as a multiple of {size}, e.g. jax.export.symbolic_shape('{size}*b, ...')."))
    if batch is None and keras.backend.backend() == "tensorflow":
        x = _asserted_multiple(x, size)
    if mask is not None:
        mask = ops.broadcast_to(mask_weight(mask, "float32"), ops.shape(x))
        if 0 in split_axes(x):  # (laid out as x, so that each device weighs its own ghost batches)
            mask = laid_out_as(mask, x)
        mask = _split(mask, size, shape)
    return _split(x, size, shape), mask


def merge_batch(y: Tensor, like: Tensor) -> Tensor:
    """Ghost batches ``y`` (from :func:`split_batch`) back in the shape of ``like``,
    and where JAX's explicit sharding splits its batch, in its sharding."""
    if 0 in split_axes(like):
        return ghost_merge(y, like)
    return ops.reshape(y, dims(like))


def _split(x: Tensor, size: int, shape: list) -> Tensor:
    if 0 in split_axes(x):  # (a plain reshape would move samples between devices: a type error)
        return ghost_split(x, size)
    # (The ghost batches counted where the batch is known: -1 is ambiguous for an input with a size 0.)
    return ops.reshape(x, [shape[0] // size if isinstance(shape[0], int) else -1, size] + shape[1:])


def _divides(size: int, batch: object) -> bool:
    """Whether ``size`` divides a symbolic ``batch`` for every value it may take: JAX's
    ``2*b % 2`` is the int 0, ``b % 2`` an expression. (A torch SymInt, whose
    remainder is a SymInt too, is checked by the reshape.)"""
    if keras.backend.backend() != "jax":
        return True
    remainder = batch % size  # type: ignore[operator]
    return isinstance(remainder, int) and remainder == 0


def _asserted_multiple(x: Tensor, size: int) -> Tensor:
    """``x``, once a graph assertion has checked that ``size`` divides its batch."""
    import tensorflow as tf

    check = tf.debugging.assert_equal(
        tf.shape(x)[0] % size, 0, message=error_message(
            "virtual_batch_size", _EXPECTED, f"virtual_batch_size={size} with a batch that is not a multiple of it",
            f"Use a batch size that is a multiple of {size}, and drop the last, smaller batch "
            "(tf.data's batch(..., drop_remainder=True), or x[:len(x) // batch_size * batch_size])."))
    with tf.control_dependencies([check]):
        return tf.identity(x)
