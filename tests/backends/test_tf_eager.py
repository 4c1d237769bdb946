"""Eager TensorFlow calls of the fast paths run one cached graph per input shape.

Eagerly, TensorFlow dispatched each of a hook's few dozen small ops on its
own (about 12 ms per call of a (2, 8, 8, 16) group norm against 4 ms for
Keras' own layer, 2-core Xeon); each hook now runs as a ``tf.function``
traced once per shape and settings
(:func:`normlab.backends.tensorflow_stats.traced_when_eager`). Its Python
body must run on the first call only; what an exportable graph declines is
still served eagerly (the private graph makes the eager choices), and the
results and gradients are the eager hook's.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="eager TensorFlow")


def _tf():
    import tensorflow as tf

    return tf


def _x(shape=(2, 4, 4, 8), offset=3.0):
    return _tf().constant(offset + np.random.default_rng(0).normal(size=shape).astype("float32"))


CALLS = {
    "group_norm": lambda x: normlab.ops.group_norm(x, groups=2, axis=-1),
    "layer_norm": lambda x: normlab.ops.layer_norm(x, axis=-1),
    "batch_norm_train": lambda x: normlab.ops.batch_norm(x, training=True, axis=-1),
    "batch_norm_infer": lambda x: normlab.ops.batch_norm(
        x, np.full(8, 3.0, "float32"), np.ones(8, "float32"), axis=-1),
}


@pytest.mark.parametrize("op", list(CALLS))
def test_a_repeated_eager_call_runs_the_hook_body_once(op, monkeypatch):
    """Counted where each hook computes: its statistics (group and layer
    norm), or TensorFlow's fused kernel (batch norm, 8 channels). The shape
    is used by no other test, so that no earlier call traced it."""
    tf = _tf()
    from normlab.backends import policy

    runs = []
    if op.startswith("batch_norm"):
        owner, name = tf.compat.v1.nn, "fused_batch_norm"
    else:
        owner, name = policy, "stats"
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        runs.append(tf.executing_eagerly())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    x = _x((3, 7, 5, 8))
    first = CALLS[op](x)
    second = CALLS[op](x)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    assert runs == [False]  # traced once, in a graph; the second call reuses it


@pytest.mark.parametrize("op", list(CALLS))
def test_results_and_gradients_match_the_general_path(op):
    from normlab import backends

    tf = _tf()
    x = _x(offset=1e4)

    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = CALLS[op](x)
            loss = tf.reduce_sum(y * tf.cos(x - 1e4))
        return y.numpy(), tape.gradient(loss, x).numpy()

    y, dx = run()
    with backends.disabled():
        y_ref, dx_ref = run()
    np.testing.assert_allclose(y, y_ref, atol=2e-4)
    np.testing.assert_allclose(dx, dx_ref, atol=2e-3)


def test_what_a_graph_declines_is_still_served_eagerly():
    """Layer norm over non-trailing axes and batch norm in inference on 2-D
    input decline in a graph outside XLA (for converters); eagerly they are
    served by the eager hook."""
    from normlab.backends import tensorflow as hooks

    x = _x()
    assert hooks.layer_norm(x, axes=[1, 2], gamma=None, beta=None, epsilon=1e-3) is not None
    flat = _x((4, 8))
    assert hooks.batch_norm_infer(flat, axis=1, mean=np.zeros(8, "float32"), variance=np.ones(8, "float32"),
                                  gamma=None, beta=None, epsilon=1e-3) is not None


def test_second_order_gradients():
    from normlab import backends

    tf = _tf()
    x = _x()
    layer = normlab.layers.GroupNormalization(groups=2)
    layer(x)

    def hessian_vector():
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(layer(x, training=True) * tf.sin(x))
            g = inner.gradient(loss, x)
            s = tf.reduce_sum(g * g)
        return outer.gradient(s, x).numpy()

    got = hessian_vector()
    with backends.disabled():
        want = hessian_vector()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
