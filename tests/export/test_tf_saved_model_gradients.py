"""A SavedModel of a model whose batch norm runs TensorFlow's fused kernel
(inputs of at least ``FUSED_MIN_ELEMENTS``), in inference and in training,
saves with its gradients (TensorFlow traces each custom gradient it finds in
the graph when it saves) and, loaded, gives the model's first and second
derivatives (fine-tuning a loaded SavedModel; a gradient penalty)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's SavedModel")

SHAPE = (16, 16, 16)  # with an unknown batch (counted as 32): 2**17 elements, the fused kernel


def _derivatives(fn, x):
    import tensorflow as tf

    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = tf.reduce_sum(tf.sin(fn(x)))
        gradient = inner.gradient(loss, x)
        penalty = tf.reduce_sum(gradient * gradient)
    return gradient.numpy(), outer.gradient(penalty, x).numpy()


def test_fused_batch_norm_saves_and_loads_with_its_derivatives(tmp_path):
    import tensorflow as tf

    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    h = normlab.BatchNormalization(moving_mean_initializer="random_uniform")(h)
    model = keras.Model(inputs, normlab.GroupNormalization(4)(h))
    module = tf.Module()
    module.model = model
    spec = [tf.TensorSpec([None, *SHAPE], tf.float32)]
    module.serve = tf.function(lambda x: model(x, training=False), input_signature=spec)
    module.train = tf.function(lambda x: model(x, training=True), input_signature=spec)
    for fn in (module.serve, module.train):
        graph = fn.get_concrete_function().graph
        assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, size=(2, *SHAPE)).astype("float32"))
    for name in ("serve", "train"):
        got = _derivatives(getattr(loaded, name), x)
        want = _derivatives(getattr(module, name), x)
        for got_part, want_part in zip(got, want):
            scale = np.abs(want_part).max()
            np.testing.assert_allclose(got_part / scale, want_part / scale, rtol=0, atol=1e-5)
