"""Which calls TensorFlow's layer-norm and RMS-norm hooks
(:mod:`normlab.backends.tensorflow_layer_norm`) serve, beyond the shared
parity cases:

* RMS norm serves trailing axes only: over split axes it declines, and the
  op matches the float64 closed form there, eagerly and under XLA.
* A training step records the layer's weights, not always its input (``fit``
  watches no input): such a step is a recorded graph, so the RMS norm hook
  serves it, and small inputs outside XLA are taken about a subsample mean
  with no ``tf.cond`` (layer, group and batch norm), as where the input is
  recorded.
* Layer norm over non-trailing axes serves eager calls and XLA, and declines
  in other graphs (``tf.function``, an exporter's trace).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab
from normlab import ops as nops
from tests.backends._closed_form import normalize_and_vjp

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow hooks")
EPSILON = 1e-3
CONDS = {"If", "StatelessIf"}


def _op_types(fn, *args):
    """Op types of ``tf.function(fn)`` traced for ``args``, its functions' included."""
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(*args).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types |= {node.op for node in function.node_def}
    return types


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_rms_norm_over_split_axes_declines_and_matches_float64(mode):
    import tensorflow as tf

    from normlab.backends import tensorflow_layer_norm as hooks

    rng = np.random.default_rng(0)
    shape, axes = (2, 4, 5, 6), [1, 3]
    x_np = rng.normal(0.5, 2.0, size=shape).astype("float32")
    dy_np = rng.normal(size=shape)
    gamma_np = rng.uniform(0.5, 1.5, size=(4, 6)).astype("float32")
    beta_np = rng.normal(size=(4, 6)).astype("float32")
    x, gamma, beta = (tf.constant(a) for a in (x_np, gamma_np, beta_np))
    assert hooks.rms_norm(x, axes=axes, gamma=gamma, beta=beta, epsilon=EPSILON) is None

    def step(x, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = nops.rms_norm(x, axes, gamma=gamma, beta=beta, epsilon=EPSILON)
        return [y, *tape.gradient(y, [x, gamma, beta], output_gradients=tf.constant(dy_np, tf.float32))]

    fn = step if mode == "eager" else tf.function(step, jit_compile=True)
    want = normalize_and_vjp(x_np, dy_np, "rms", axes, gamma=gamma_np, beta=beta_np, epsilon=EPSILON)
    for _ in range(3):  # eagerly: the first calls, then a hot call's graph
        got = fn(x, gamma, beta)
        for name, value in zip(["y", "dx", "dgamma", "dbeta"], got):
            scale = max(1.0, float(np.max(np.abs(want[name]))))
            np.testing.assert_allclose(value.numpy(), want[name], rtol=0, atol=2e-5 * scale, err_msg=name)


def test_rms_norm_serves_a_step_that_records_only_its_parameters():
    import tensorflow as tf

    from normlab.backends import tensorflow_layer_norm as hooks

    served = {}
    gamma = tf.Variable(tf.ones([8]))

    def probe(where, watch):
        def call(t):
            with tf.GradientTape():
                # a read of the variable, recorded as in a training step; or a constant
                g = gamma + 0.0 if watch == "gamma" else tf.ones([8])
                served[where] = hooks.rms_norm(t, axes=[2], gamma=g, beta=None, epsilon=1e-6) is not None
            return t
        return call

    x = tf.ones((2, 3, 8))
    tf.function(probe("graph, gamma recorded", "gamma"))(x)
    tf.function(probe("graph, nothing recorded", None))(x)
    assert served == {"graph, gamma recorded": True, "graph, nothing recorded": False}


LAYERS = {
    "layer": lambda: normlab.layers.LayerNormalization(),
    "group": lambda: normlab.layers.GroupNormalization(groups=4),
    "batch": lambda: normlab.layers.BatchNormalization(),
}
CALL = {"batch": {"training": True}}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_small_training_step_that_records_only_the_weights_decides_nothing(kind):
    """As ``fit``'s step: the tape records the layer's weights, not its input."""
    import tensorflow as tf

    layer = LAYERS[kind]()  # 12 channels keep batch norm off the fused kernel
    layer.build((8, 8, 8, 12))

    def step(x):
        with tf.GradientTape() as tape:
            y = layer(x, **CALL.get(kind, {}))
        return tape.gradient(y, layer.trainable_weights)

    assert not _op_types(step, tf.TensorSpec((8, 8, 8, 12), tf.float32)) & CONDS


def test_layer_norm_over_non_trailing_axes_serves_eager_calls_and_xla_only():
    import tensorflow as tf

    from normlab.backends import tensorflow_layer_norm as hooks

    served = {}

    def probe(where):
        def call(t):
            served[where] = hooks.layer_norm(t, axes=[1], gamma=None, beta=None, epsilon=EPSILON) is not None
            return t
        return call

    x = tf.ones((2, 3, 8))
    probe("eager")(x)
    tf.function(probe("graph"))(x)
    tf.function(probe("xla"), jit_compile=True)(x)
    assert served == {"eager": True, "graph": False, "xla": True}
