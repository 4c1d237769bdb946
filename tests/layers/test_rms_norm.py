"""RMSNormalization: harness, float64 reference, parity with keras.layers.RMSNormalization, errors."""

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


@pytest.mark.parametrize(
    "kwargs, shape, trainable",
    [
        (dict(), FIRST3, 1),
        (dict(axis=[1, 2], center=True), LAST4, 2),  # multi-axis, with the optional offset
    ],
)
def test_harness(kwargs, shape, trainable):
    run_layer_test(normlab.RMSNormalization, kwargs, shape, expected_trainable=trainable)


def test_defaults_match_keras():
    ours, theirs = normlab.RMSNormalization(), keras.layers.RMSNormalization()
    assert ours.get_config()["axis"] == theirs.get_config()["axis"] == -1
    assert ours.get_config()["epsilon"] == theirs.get_config()["epsilon"] == 1e-6


@pytest.mark.parametrize("axis, shape", [(-1, FIRST3), ([2, 3], LAST4)])
def test_parity_with_keras(axis, shape):
    x = np.random.default_rng(0).normal(0.5, 2.0, size=shape).astype("float32")
    ours, theirs = normlab.RMSNormalization(axis=axis), keras.layers.RMSNormalization(axis=axis)
    ours.build(shape)
    theirs.build(shape)
    scale = np.random.default_rng(1).uniform(0.5, 1.5, size=ours.gamma.shape).astype("float32")
    ours.set_weights([scale])
    theirs.set_weights(ours.get_weights())  # one weight each, `scale` in both
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [1, -1, [1, 2]])
def test_matches_reference_any_axis(axis):
    x = np.random.default_rng(2).normal(1.0, 3.0, size=LAST4).astype("float32")
    layer = normlab.RMSNormalization(axis=axis, center=True, gamma_initializer="random_uniform",
                                     beta_initializer="random_uniform")
    y = ops.convert_to_numpy(layer(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    np.testing.assert_allclose(y, reference.rms_norm(x, axis, gamma, beta, 1e-6), rtol=1e-5, atol=1e-5)


def test_registry():
    layer = normlab.get("rms(axis=[1, 2], epsilon=1e-5)")
    assert isinstance(layer, normlab.RMSNormalization)
    assert (layer.axis, layer.epsilon) == ([1, 2], 1e-5)
    assert isinstance(normlab.get("rmsnorm"), normlab.RMSNormalization)


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a non-negative float.*Received: epsilon=-1\.0"):
        normlab.RMSNormalization(epsilon=-1.0)
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected feature axes other than the batch axis 0\. "
                                         r"Received: axis=0\..*axis=-1"):
        normlab.RMSNormalization(axis=0)


def test_scale_attribute_is_the_weight_as_in_keras():
    # Keras' RMSNormalization keeps its weight in `layer.scale`; code reading it
    # must get the weight, not the `scale=True` switch (which would multiply by 1).
    x = np.random.default_rng(3).normal(size=FIRST3).astype("float32")
    ours, theirs = normlab.RMSNormalization(), keras.layers.RMSNormalization()
    ours(x), theirs(x)
    assert ours.scale is ours.gamma and tuple(ours.scale.shape) == tuple(theirs.scale.shape)
    # the variable's name too: code selecting weights by path (weight decay exclusions) finds it
    assert [w.path.split("/")[-1] for w in ours.weights] == [w.path.split("/")[-1] for w in theirs.weights]
    ours.scale.assign(np.linspace(0.5, 2.0, FIRST3[-1]).astype("float32"))
    theirs.scale.assign(ops.convert_to_numpy(ours.scale))
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), atol=1e-6)
    assert ours.get_config()["scale"] is True
    restored = normlab.RMSNormalization.from_config(ours.get_config())
    restored.build(FIRST3)
    assert restored.scale is restored.gamma
    unscaled = normlab.RMSNormalization(scale=False)
    unscaled.build(FIRST3)
    assert unscaled.scale is None and unscaled.weights == [] and unscaled.get_config()["scale"] is False
