"""Where a layer's call runs: the scopes and tracers that decide whether a
variable's value can be read, or an update made, now (JAX's stateless
calls, TensorFlow graphs, torch's compilers and exporters, Keras' shape
inference, OpenVINO graphs)."""

from __future__ import annotations

import keras
from keras import ops

from normlab import _compat, backends
from normlab.types import Tensor


def in_stateless_call() -> bool:
    """True inside a stateless call, where updates of *trainable* variables made
    in the forward pass are discarded: ``layer.stateless_call`` (and
    ``keras.StatelessScope``) on any backend, which JAX's ``fit``, ``predict``
    and ``evaluate`` run; not Keras' shape inference, which runs in one too."""
    return _compat.in_stateless_scope() and not in_shape_inference()


#: Why a stateless call (:func:`in_stateless_call`) leaves a forward pass's
#: updates of trainable weights undone, for warnings.
STATELESS_DISCARDS = ("a stateless call (`stateless_call`, which JAX's `fit`, `predict` and `evaluate` run) "
                      "discards updates of trainable weights made in the forward pass")


def concrete_bool(variable: keras.Variable) -> bool | None:
    """The variable's value as a Python bool, or None inside a traced function."""
    if torch_traced():  # torch.compile, torch.export: reading the value would break the graph
        return None
    try:
        return bool(ops.convert_to_numpy(variable))
    except Exception:  # a symbolic value (tf.function, jax.jit): only known at run time
        return None


torch_traced = backends.torch_traced  # (its callers import it from this module)


def bool_at_trace(variable: keras.Variable) -> bool | None:
    """The variable's value as a Python bool now, also inside a TensorFlow
    graph being traced (read outside it, under ``tf.init_scope``): what a
    trace may take as already done. None under torch's compilers."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        with tf.init_scope():
            return concrete_bool(variable)
    return concrete_bool(variable)


def trace_runs_now() -> bool:
    """Whether a traced torch call runs as it is traced (``torch.compile``,
    ``torch.jit.trace``), so that its variable updates happen; an exporter
    only records them, as do TensorFlow's and JAX's traces."""
    if keras.backend.backend() != "torch":
        return False
    import torch
    return not (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def in_openvino_graph(x: Tensor) -> bool:
    """True where ``x`` is an OpenVINO tensor computed from a graph input: Keras'
    openvino ``predict`` builds its graph from placeholders, so a value
    assigned from ``x`` there would be a graph node, not a number."""
    output = getattr(x, "output", None)
    if keras.backend.backend() != "openvino" or output is None:
        return False
    seen, todo = set(), [output.get_node()]
    while todo:
        node = todo.pop()
        if node.get_type_name() == "Parameter":
            return True
        if id(node) not in seen:
            seen.add(id(node))
            todo.extend(i.get_source_output().get_node() for i in node.inputs())
    return False


def in_shape_inference() -> bool:
    """True while Keras runs a layer only to infer output shapes (symbolic tensors)."""
    return _compat.in_symbolic_scope()
