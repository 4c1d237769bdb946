"""The ops on ``keras.Input``'s symbolic tensors, as ``keras.ops`` are.

Called with a ``KerasTensor`` among its arguments (at the top level, or in a
list or tuple there), a public op adds a node to the functional graph
instead of computing: a :class:`NormOp`, which Keras' shape inference runs
on the symbolic tensors, which the built model runs on its tensors, and
which a saved ``.keras`` model stores by the op's name with the arguments
of its call. Any other call goes straight to the op.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import keras

from normlab import _compat

F = TypeVar("F", bound=Callable[..., Any])

#: The ops a :class:`NormOp` may run, by name (filled by :func:`symbolic`).
_OPS: dict[str, Callable[..., Any]] = {}


def _symbolic(values: Any) -> bool:
    """Whether a ``KerasTensor`` is among ``values`` or in a list or tuple among them."""
    for value in values:
        if isinstance(value, keras.KerasTensor) or (
                type(value) in (list, tuple) and any(isinstance(v, keras.KerasTensor) for v in value)):
            return True
    return False


def symbolic(fn: F) -> F:
    """``fn``, which on symbolic tensors returns a :class:`NormOp` node's outputs."""
    _OPS[fn.__name__] = fn

    @functools.wraps(fn)
    def op(*args: Any, **kwargs: Any) -> Any:
        if _symbolic(args) or _symbolic(kwargs.values()):
            return NormOp(fn.__name__)(*args, **kwargs)
        return fn(*args, **kwargs)

    return op  # type: ignore[return-value]


@keras.saving.register_keras_serializable(package="normlab")
class NormOp(keras.Operation):
    """One call of a normlab op in a functional graph.

    Args:
        op: the op's name in :mod:`normlab.ops`, e.g. ``"group_norm"``.
        name: the node's name. Default None: the op's name, made unique.

    Example:
        >>> import keras
        >>> from normlab import ops
        >>> inputs = keras.Input((8, 8, 16))
        >>> model = keras.Model(inputs, ops.group_norm(inputs, 4))
        >>> model.output.shape
        (None, 8, 8, 16)
    """

    def __init__(self, op: str, name: str | None = None) -> None:
        if op not in _OPS:
            raise ValueError(f"Invalid `op`: expected the name of an op in normlab.ops, one of {sorted(_OPS)}. "
                             f"Received: op={op!r}. Pass the function's name, e.g. op='group_norm'.")
        super().__init__(name=name or _compat.auto_name(op))
        self.op = op

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return _OPS[self.op](*args, **kwargs)

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        # Only the symbolic tensors go through shape inference: JAX's would
        # trace every other value too (an axis list, as traced ints).
        flat = keras.tree.flatten((args, kwargs))
        where = [i for i, v in enumerate(flat) if isinstance(v, keras.KerasTensor)]

        def run(*tensors: Any) -> Any:
            values = list(flat)
            for i, t in zip(where, tensors):
                values[i] = t
            call_args, call_kwargs = keras.tree.pack_sequence_as((args, kwargs), values)
            return self.call(*call_args, **call_kwargs)

        return _compat.compute_output_spec(run, *(flat[i] for i in where))

    def get_config(self) -> dict[str, Any]:
        return {"op": self.op, "name": self.name}
