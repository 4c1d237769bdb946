"""The TensorFlow fast paths' custom gradients live as long as their graphs
(:mod:`normlab.backends.tensorflow_gradients`).

* A ``tf.function`` whose trace used a hook is collected once it is
  dropped: ``tf.custom_gradient``'s registry entry held every traced graph
  for the life of the process (75 MB per 100 traces of a group norm
  training step).
* Gradients are unchanged wherever TensorFlow looks the gradient up: a tape
  inside or around the function, a nested function called again after the
  function that first traced it is gone, ``tf.cond`` and ``tf.while_loop``
  bodies, second order, XLA.
* A graph rebuilt from its ``GraphDef`` after its graphs are gone gets a
  ``LookupError`` that says why (TensorFlow's own error there named a tensor
  of another graph: such a graph was never differentiable through
  ``tf.custom_gradient``).
"""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest

import normlab
from normlab import ops as nops

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow hooks")

# Each hook that traces a tf.custom_gradient (training batch norm's statistics included).
OPS = {
    "group_norm": lambda x: nops.group_norm(x, groups=4),
    "layer_norm": lambda x: nops.layer_norm(x, axis=-1),
    "layer_norm_rows": lambda x: nops.layer_norm(x, axis=[1, 2]),
    "rms_norm": lambda x: nops.rms_norm(x, axis=-1),
    "batch_norm_stats": lambda x: nops.batch_norm(x, training=True, return_stats=True),
}


def _data(seed: int = 0, shape: tuple[int, ...] = (3, 5, 8)):
    import tensorflow as tf

    return tf.constant(np.random.default_rng(seed).normal(2.0, 1.5, shape).astype("float32"))


def _loss(op, x):
    import tensorflow as tf

    out = OPS[op](x)
    parts = out if isinstance(out, tuple) else (out,)
    weights = [tf.cos(tf.range(tf.size(p), dtype=p.dtype) * 0.37) for p in parts]
    return sum(tf.reduce_sum(tf.reshape(p, [-1]) * w) for p, w in zip(parts, weights))


def _grad(op, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(op, x)
    return tape.gradient(loss, x)


def _reference(op, x):
    with normlab.backends.disabled():
        return _grad(op, x).numpy()


def _custom_gradient_ops(graph) -> int:
    count = 0
    for op in graph.get_operations():
        try:
            op.get_attr("_gradient_op_type")
        except ValueError:
            continue
        count += 1
    return count


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_dropped_function_frees_its_graph(op):
    import tensorflow as tf

    x = _data()
    fn = tf.function(lambda v: _grad(op, v))
    concrete = fn.get_concrete_function(x)
    graph = weakref.ref(concrete.graph)
    assert _custom_gradient_ops(concrete.graph) > 0  # the hook's gradient was traced
    np.testing.assert_allclose(concrete(x).numpy(), _reference(op, x), rtol=1e-4, atol=1e-5)
    del fn, concrete
    gc.collect()
    assert graph() is None


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_tape_around_the_function(op):
    import tensorflow as tf

    x = _data(1)
    fn = tf.function(lambda v: _loss(op, v))
    fn.get_concrete_function(x)  # traced first; its gradient is built later
    gc.collect()
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(x)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), _reference(op, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["group_norm", "rms_norm", "batch_norm_stats"])
def test_a_nested_function_outlives_the_function_that_traced_it(op):
    import tensorflow as tf

    x = _data(2)
    inner = tf.function(lambda v: _loss(op, v))
    first = tf.function(lambda v: inner(v) * 1.0)
    first(x)  # traces inner inside first
    del first
    gc.collect()
    second = tf.function(lambda v: _grad_of(inner, v))
    np.testing.assert_allclose(second(x).numpy(), _reference(op, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_grad_of(inner, x).numpy(), _reference(op, x), rtol=1e-4, atol=1e-5)


def _grad_of(fn, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(x)
    return tape.gradient(loss, x)


@pytest.mark.parametrize("op", ["group_norm", "layer_norm", "batch_norm_stats"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_control_flow_bodies(op, jit_compile):
    import tensorflow as tf

    x = _data(3)

    def in_cond(v):
        return tf.cond(tf.reduce_sum(v) > -1e9, lambda: _loss(op, v), lambda: tf.reduce_sum(v))

    def in_loop(v):
        def body(i, acc):
            return i + 1, acc + _loss(op, v * (1.0 + tf.cast(i, v.dtype)))

        return tf.while_loop(lambda i, _: i < 2, body, (tf.constant(0), tf.constant(0.0)), maximum_iterations=2)[1]

    expected_loop = _reference(op, x) + 2.0 * _reference(op, 2.0 * x)
    for body, expected in ((in_cond, _reference(op, x)), (in_loop, expected_loop)):
        fn = tf.function(lambda v, body=body: _grad_of(body, v), jit_compile=jit_compile)
        got = fn(x).numpy()
        gc.collect()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fn(x).numpy(), got, rtol=0, atol=0)


def test_second_order_inside_a_function():
    import tensorflow as tf

    x = _data(4)

    def hessian_vector(v):
        with tf.GradientTape() as outer:
            outer.watch(v)
            with tf.GradientTape() as inner:
                inner.watch(v)
                loss = _loss("group_norm", v)
            g = inner.gradient(loss, v)
            s = tf.reduce_sum(g * tf.sin(v))
        return outer.gradient(s, v)

    got = tf.function(hessian_vector)(x)
    with normlab.backends.disabled():
        expected = hessian_vector(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3, atol=1e-4)


def test_a_graph_def_rebuilt_after_its_graphs_are_gone_says_why():
    import tensorflow as tf

    x = _data(5)

    def recorded_loss(v):  # recorded by a tape: the hook's custom gradient is traced
        with tf.GradientTape() as tape:
            tape.watch(v)
            return _loss("group_norm", v)

    graph_def = tf.function(recorded_loss).get_concrete_function(x).graph.as_graph_def()
    assert any("_gradient_op_type" in node.attr for node in graph_def.node)
    gc.collect()
    with tf.Graph().as_default():
        v = tf.compat.v1.placeholder(tf.float32, x.shape)
        tf.graph_util.import_graph_def(graph_def, input_map={"v:0": v})
        hook = next(op for op in tf.compat.v1.get_default_graph().get_operations() if op.type == "IdentityN")
        with pytest.raises(LookupError, match="traced in a graph that no longer exists"):
            tf.gradients(hook.outputs[0], v)
