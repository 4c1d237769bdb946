"""SwitchableNormalization: harness, float64 reference, one-hot equivalence with IN / LN / BN, errors."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test

# Shapes shared across the test files: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC

ONE_HOT = {"instance": [30.0, 0.0, 0.0], "layer": [0.0, 30.0, 0.0], "batch": [0.0, 0.0, 30.0]}  # softmax ~ 1e-13 off


def one_hot(kind, axis=-1, **kwargs):
    init = keras.initializers.Constant(ONE_HOT[kind])
    return normlab.SwitchableNormalization(
        axis=axis, mean_weights_initializer=init, variance_weights_initializer=init, **kwargs
    )


def affine_init():
    return dict(gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=1),
                beta_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=2))


def test_harness():
    run_layer_test(normlab.SwitchableNormalization, dict(), LAST4, expected_trainable=4,
                   expected_non_trainable=2, expected_params=30)


@pytest.mark.parametrize("axis, shape", [(-1, LAST4), (1, FIRST3)])
def test_training_then_inference_match_reference(axis, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    layer = normlab.SwitchableNormalization(
        axis=axis, momentum=0.9, mean_weights_initializer=keras.initializers.Constant([0.2, -0.5, 0.4]),
        variance_weights_initializer=keras.initializers.Constant([-0.1, 0.3, 0.6]), **affine_init(),
    )
    y = ops.convert_to_numpy(layer(x, training=True))
    wm, wv, gamma, beta = (ops.convert_to_numpy(w) for w in
                           (layer.mean_weights, layer.variance_weights, layer.gamma, layer.beta))
    expected, mean, var = reference.switchable_norm(x, wm, wv, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)

    x2 = rng.normal(size=shape).astype("float32")
    y2 = ops.convert_to_numpy(layer(x2))
    expected2, _, _ = reference.switchable_norm(x2, wm, wv, axis, gamma, beta, 1e-3, 0.1 * mean, 0.9 + 0.1 * var)
    np.testing.assert_allclose(y2, expected2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis, shape", [(-1, LAST4), (1, FIRST3)])
def test_one_hot_instance_equals_instance_norm(axis, shape):
    x = np.random.default_rng(1).normal(1.0, 2.0, size=shape).astype("float32")
    sn, inorm = one_hot("instance", axis, **affine_init()), normlab.InstanceNormalization(axis=axis, **affine_init())
    for training in (True, False):
        np.testing.assert_allclose(ops.convert_to_numpy(sn(x, training=training)),
                                   ops.convert_to_numpy(inorm(x)), atol=1e-5)


@pytest.mark.parametrize("axis, shape", [(-1, LAST4), (1, FIRST3)])
def test_one_hot_layer_equals_layer_norm_with_per_channel_affine(axis, shape):
    x = np.random.default_rng(2).normal(1.0, 2.0, size=shape).astype("float32")
    sn, gn1 = one_hot("layer", axis, **affine_init()), normlab.GroupNormalization(groups=1, axis=axis, **affine_init())
    np.testing.assert_allclose(ops.convert_to_numpy(sn(x, training=True)), ops.convert_to_numpy(gn1(x)), atol=1e-5)
    plain = one_hot("layer", axis, center=False, scale=False)
    ln = normlab.LayerNormalization(axis=list(range(1, len(shape))), center=False, scale=False)
    np.testing.assert_allclose(ops.convert_to_numpy(plain(x)), ops.convert_to_numpy(ln(x)), atol=1e-5)


@pytest.mark.parametrize("axis, shape", [(-1, LAST4), (1, FIRST3)])
def test_one_hot_batch_equals_batch_norm_in_training_and_inference(axis, shape):
    rng = np.random.default_rng(3)
    sn, bn = one_hot("batch", axis, momentum=0.7, **affine_init()), normlab.BatchNormalization(axis=axis, momentum=0.7,
                                                                                               **affine_init())
    for _ in range(2):
        x = rng.normal(2.0, 3.0, size=shape).astype("float32")
        np.testing.assert_allclose(ops.convert_to_numpy(sn(x, training=True)),
                                   ops.convert_to_numpy(bn(x, training=True)), atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(sn.moving_mean), ops.convert_to_numpy(bn.moving_mean), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(sn.moving_variance), ops.convert_to_numpy(bn.moving_variance),
                               rtol=1e-5)
    x = rng.normal(size=shape).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(sn(x)), ops.convert_to_numpy(bn(x)), atol=1e-5)


def test_trainable_false_means_inference():
    x = np.random.default_rng(4).normal(5.0, 1.0, size=LAST4).astype("float32")
    layer = one_hot("batch")
    layer.build(x.shape)
    layer.trainable = False
    y = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), atol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), np.zeros(6))


def test_registry():
    layer = normlab.get("switchable(momentum=0.9, axis=1)")
    assert isinstance(layer, normlab.SwitchableNormalization) and (layer.momentum, layer.axis) == (0.9, 1)
    assert isinstance(normlab.get("switchnorm"), normlab.SwitchableNormalization)


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected an input of rank >= 3.*SwitchableNormalization.*"
                                         r"Received: input_shape=\(4, 3\)\. Add a spatial axis"):
        normlab.SwitchableNormalization()(np.zeros((4, 3), "float32"))
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected a single int \(the channel axis\) for "
                                        r"SwitchableNormalization\. Received: axis=\[1, 2\]"):
        normlab.SwitchableNormalization(axis=[1, 2])
    with pytest.raises(ValueError, match=r"Invalid `momentum`: .*Received: momentum=-0\.1"):
        normlab.SwitchableNormalization(momentum=-0.1)
