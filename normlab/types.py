"""Type aliases used in normlab's public signatures.

They are ordinary :mod:`typing` objects, valid at run time on every
supported Python (3.10+), so they can be used in your own annotations and
in ``typing.get_type_hints``::

    from normlab.types import Axis, Tensor

    def my_norm(x: Tensor, axis: Axis = -1) -> Tensor: ...

Tensors are typed as :data:`Tensor` (``Any``): each Keras backend has its
own tensor class, none of them importable without its backend, and every
op accepts anything ``keras.ops.convert_to_tensor`` does. The Keras
argument aliases (:data:`Initializer`, :data:`Regularizer`,
:data:`Constraint`) list exactly what ``keras.initializers.get``,
``keras.regularizers.get`` and ``keras.constraints.get`` accept.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeAlias, Union

import keras
import numpy as np

# These aliases are evaluated when the module is imported. ``X | Y`` works at
# run time on Python 3.10 only between classes (not with strings or some
# typing objects), so they are spelled with ``typing.Union`` and ``Optional``.

__all__ = [
    "Axis",
    "AxisName",
    "Constraint",
    "DTypeLike",
    "Initializer",
    "Regularizer",
    "RenormClipping",
    "ReplicaSum",
    "Shape",
    "Tensor",
]

#: A backend tensor (``tf.Tensor``, ``jax.Array``, ``torch.Tensor``), a Keras
#: variable, a NumPy array, or anything ``keras.ops.convert_to_tensor`` takes
#: (a Python scalar, a nested list). ``Any``: the backends' tensor classes
#: cannot be named without importing every backend.
Tensor: TypeAlias = Any

#: A feature axis, or several: an int, or a non-empty list or tuple of ints.
#: Negative axes count from the end; the batch axis 0 is never a feature axis.
#: Other sequences (a ``range``, a NumPy array) are rejected at run time.
Axis: TypeAlias = Union[int, List[int], Tuple[int, ...]]

#: A static shape, as ``build`` receives it: one int per axis, None where the
#: size is not known until run time (the batch size, usually).
Shape: TypeAlias = Sequence[Optional[int]]

#: A dtype: a name such as ``"float32"``, a NumPy dtype or scalar type, or a
#: backend's dtype object (``torch.float32``, ``tf.float32``; the reason for
#: ``Any``), anything ``keras.backend.standardize_dtype`` takes.
DTypeLike: TypeAlias = Union[str, np.dtype[Any], type[np.generic], Any]

#: What ``keras.initializers.get`` takes: a name (``"ones"``), a config dict,
#: an initializer instance, or a callable ``f(shape, dtype=None) -> tensor``.
Initializer: TypeAlias = Union[str, Dict[str, Any], keras.initializers.Initializer, Callable[..., Any]]

#: What ``keras.regularizers.get`` takes: None (no regularization), a name
#: (``"l2"``), a config dict, a regularizer instance, or a callable
#: ``f(weight) -> scalar loss``.
Regularizer: TypeAlias = Union[str, Dict[str, Any], keras.regularizers.Regularizer, Callable[..., Any], None]

#: What ``keras.constraints.get`` takes: None (no constraint), a name
#: (``"non_neg"``), a config dict, a constraint instance, or a callable
#: ``f(weight) -> weight``.
Constraint: TypeAlias = Union[str, Dict[str, Any], keras.constraints.Constraint, Callable[..., Any], None]

#: A cross-replica sum, ``f(tensor) -> tensor``: the sum of ``tensor`` over
#: every replica of a data-parallel step, on each replica, differentiable
#: (see :func:`normlab.distributed.replica_sum`).
ReplicaSum: TypeAlias = Callable[[Tensor], Tensor]

#: A JAX mapped-axis name (``jax.shard_map``, ``jax.pmap``): a string, or a
#: tuple of them for several mesh axes (see :func:`normlab.distributed.axis_name`).
AxisName: TypeAlias = Union[str, Tuple[str, ...]]

#: Batch renormalization's clipping: a dict with optional keys ``"rmax"``
#: (default inf), ``"rmin"`` (default 0) and ``"dmax"`` (default inf); a key
#: whose value is None counts as absent.
RenormClipping: TypeAlias = Dict[str, float]
