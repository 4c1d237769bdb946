"""Cross-replica sums for synchronized batch statistics, one per backend.

The statistics kernel (:func:`normlab.ops.moments.shifted_moments`) takes an
optional ``replica_sum``: a callable that sums a tensor over every replica
taking part in a data-parallel step and returns the total on each of them.
:func:`replica_sum` returns the one that applies where it is called, or
None when the statistics a replica sees are already those of the global
batch (no distribution, or a distribution the compiler handles):

* TensorFlow: inside a replica context of a ``tf.distribute`` strategy with
  more than one replica in sync (``strategy.run``, and so Keras'
  ``fit``/``evaluate``/``predict`` under ``MirroredStrategy``,
  ``MultiWorkerMirroredStrategy`` or ``TPUStrategy``), the sum is
  ``tf.distribute.get_replica_context().all_reduce(SUM, t)``, whose
  gradient is itself an all-reduce. In a cross-replica context, or with
  the default strategy, None.
* JAX: inside :func:`axis_name` (for code mapped with ``jax.shard_map`` or
  ``jax.pmap`` over that axis), the sum is ``jax.lax.psum(t, name)``.
  Otherwise None: under ``jax.jit`` with sharded inputs, including Keras'
  ``keras.distribution.DataParallel``, every op already sees the global
  array, and XLA inserts the all-reduces itself.
* PyTorch: when ``torch.distributed`` is initialized with more than one
  process (any backend, gloo on CPU included), the sum is an all-reduce
  over the process group (the world, or the one set by
  :func:`process_group`) whose backward all-reduces the gradient.
  Otherwise None.

Every process or replica must run the same layers on the same step (each
synchronized statistic is a collective call), with the same channel
counts; the batch sizes may differ, and a replica's share may be empty.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import keras

from normlab.types import AxisName, ReplicaSum, Tensor

_state = threading.local()


@contextlib.contextmanager
def axis_name(name: AxisName) -> Iterator[AxisName]:
    """Context manager: under JAX, synchronize statistics over the mapped axis ``name``.

    Use it inside a function mapped with ``jax.shard_map`` or ``jax.pmap``
    whose batch is split over the mesh or mapped axis ``name`` (a string, or
    a tuple of axis names): while the function is traced in the block,
    synchronized layers sum their statistics with ``jax.lax.psum(t, name)``.
    Has no effect on the other backends.

    Example:
        >>> import normlab
        >>> with normlab.distributed.axis_name("batch"):
        ...     normlab.distributed.current_axis_name()
        'batch'
        >>> normlab.distributed.current_axis_name() is None
        True
    """
    previous = getattr(_state, "axis_name", None)
    _state.axis_name = name
    try:
        yield name
    finally:
        _state.axis_name = previous


def current_axis_name() -> AxisName | None:
    """The JAX axis name set by the innermost :func:`axis_name`, or None."""
    return getattr(_state, "axis_name", None)


@contextlib.contextmanager
def process_group(group: Any) -> Iterator[Any]:
    """Context manager: under PyTorch, synchronize statistics over ``group`` only.

    ``group`` is a ``torch.distributed`` process group (from
    ``torch.distributed.new_group``); by default synchronized layers reduce
    over the whole world. Has no effect on the other backends.
    """
    previous = getattr(_state, "group", None)
    _state.group = group
    try:
        yield group
    finally:
        _state.group = previous


def _tensorflow_sum() -> ReplicaSum | None:
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None  # cross-replica context (the whole batch at once), or no strategy

    def replica_sum(tensor: Tensor) -> Tensor:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)

    return replica_sum


def _jax_sum() -> ReplicaSum | None:
    name = current_axis_name()
    if name is None:
        return None
    import jax

    def replica_sum(tensor: Tensor) -> Tensor:
        return jax.lax.psum(tensor, name)

    return replica_sum


_torch_function: Any = None


def _torch_all_reduce() -> Any:
    """A differentiable all-reduce (sum) for torch: forward and backward both all-reduce."""
    global _torch_function
    if _torch_function is None:
        import torch
        import torch.distributed as dist

        class AllReduceSum(torch.autograd.Function):
            @staticmethod
            def forward(ctx, tensor, group):
                ctx.group = group
                total = tensor.clone(memory_format=torch.contiguous_format)
                dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
                return total

            @staticmethod
            def backward(ctx, grad):
                # d(sum_r t_r)/d t_r = 1 for each of the replicas' losses: sum their gradients.
                return AllReduceSum.apply(grad.contiguous(), ctx.group), None

        _torch_function = AllReduceSum
    return _torch_function


if keras.backend.backend() == "torch":
    # Defined now (torch is loaded): torch.compile cannot trace a class
    # definition, so a first synchronized call inside a compiled function
    # (fullgraph=True) would fail.
    _torch_all_reduce()


def _torch_sum() -> ReplicaSum | None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = getattr(_state, "group", None)
    group = dist.group.WORLD if group is None else group
    if dist.get_world_size(group) <= 1:
        return None
    function = _torch_all_reduce()

    def replica_sum(tensor: Tensor) -> Tensor:
        return function.apply(tensor, group)

    return replica_sum


_SUMS: dict[str, Callable[[], ReplicaSum | None]] = {
    "tensorflow": _tensorflow_sum, "jax": _jax_sum, "torch": _torch_sum,
}


def replica_sum() -> ReplicaSum | None:
    """The cross-replica sum that applies here, or None when not distributed.

    Returns a callable ``f(tensor) -> tensor`` that sums ``tensor`` (the same
    shape on every replica) over all replicas and is differentiable, or None
    when this call already sees the global batch. See the module docstring
    for what is detected on each backend. Call it where the statistics are
    computed (in a layer's ``call``), so that it sees the replica context.

    Example:
        >>> import normlab
        >>> normlab.distributed.replica_sum() is None      # not under any strategy
        True
    """
    find = _SUMS.get(keras.backend.backend())
    return None if find is None else find()
