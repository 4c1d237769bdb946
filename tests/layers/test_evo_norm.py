"""EvoNormB0 and EvoNormS0: harness, float64 references, moving variance (timm's rule), errors."""

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


def test_b0_harness():
    run_layer_test(normlab.EvoNormB0, dict(), LAST4, expected_trainable=3, expected_non_trainable=1,
                   expected_params=24)


def test_s0_harness():
    run_layer_test(normlab.EvoNormS0, dict(groups=2, axis=1), FIRST3, expected_trainable=3, expected_params=18)


def _random_init():
    return dict(gamma_initializer="random_uniform", beta_initializer="random_uniform",
                v_initializer=keras.initializers.RandomUniform(-1.0, 1.0))


@pytest.mark.parametrize("axis, shape", [(-1, LAST4), (1, FIRST3)])
def test_b0_training_then_inference_match_reference(axis, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape).astype("float32")
    layer = normlab.EvoNormB0(axis=axis, momentum=0.8, **_random_init())
    y = ops.convert_to_numpy(layer(x, training=True))
    gamma, beta, v = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta, layer.v))
    expected, var = reference.evo_norm_b0(x, axis, v, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    n = x.size / x.shape[axis]
    moving = 0.8 * 1.0 + 0.2 * var * n / (n - 1)  # timm: running_var gets the unbiased batch variance
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), moving, rtol=1e-5)

    x2 = rng.normal(size=shape).astype("float32")
    y2 = ops.convert_to_numpy(layer(x2, training=False))
    np.testing.assert_allclose(y2, reference.evo_norm_b0(x2, axis, v, gamma, beta, 1e-3, moving)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), moving, rtol=1e-5)  # unchanged


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a graph's unknown sizes")
@pytest.mark.parametrize("signature", [[None, 3, 3, 6], [None, None, None, 6]])
def test_b0_moving_variance_with_unknown_sizes(signature):
    """Traced with unknown batch (and spatial) sizes, the element count per
    channel is a tensor: the moving variance still gets the unbiased batch
    variance, ``var * n / (n - 1)`` with ``n`` counted at run time."""
    import tensorflow as tf

    x = np.random.default_rng(1).normal(1.0, 2.0, size=LAST4).astype("float32")
    layer = normlab.EvoNormB0(momentum=0.5, **_random_init())
    layer.build(LAST4)
    step = tf.function(lambda t: layer(t, training=True), input_signature=[tf.TensorSpec(signature)])
    for batch in (x, x[:2]):  # one trace, two counts: 36 and 18 per channel
        before = ops.convert_to_numpy(layer.moving_variance)
        step(batch)
        gamma, beta, v = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta, layer.v))
        _, var = reference.evo_norm_b0(batch, -1, v, gamma, beta, 1e-3)
        n = batch.size / batch.shape[-1]
        expected = 0.5 * before + 0.5 * var * n / (n - 1)
        np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), expected, rtol=1e-5)


def test_b0_trainable_false_means_inference():
    x = np.random.default_rng(0).normal(3.0, 1.0, size=LAST4).astype("float32")
    layer = normlab.EvoNormB0()
    layer.build(x.shape)
    layer.trainable = False
    y = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, reference.evo_norm_b0(x, moving_variance=np.ones(6))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), np.ones(6))


@pytest.mark.parametrize("kwargs, shape, groups, axis", [
    (dict(groups=3), LAST4, 3, -1),
    (dict(group_size=2, axis=1), FIRST3, 3, 1),
    (dict(groups=-1), LAST5, -1, -1),
])
def test_s0_matches_reference(kwargs, shape, groups, axis):
    x = np.random.default_rng(1).normal(0.5, 2.0, size=shape).astype("float32")
    layer = normlab.EvoNormS0(**kwargs, **_random_init())
    y = ops.convert_to_numpy(layer(x))
    gamma, beta, v = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta, layer.v))
    np.testing.assert_allclose(y, reference.evo_norm_s0(x, groups, axis, v, gamma, beta, 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=True)), y, atol=1e-6)  # no batch statistics


def test_registry():
    assert isinstance(normlab.get("evonorm_b0(momentum=0.8)"), normlab.EvoNormB0)
    s0 = normlab.get("evos0(groups=8)")
    assert isinstance(s0, normlab.EvoNormS0) and s0.groups == 8


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected an input of rank >= 3 .* for EvoNormB0.*"
                                         r"Received: input_shape=\(4, 3\)\. Add a spatial axis"):
        normlab.EvoNormB0()(np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match=r"Invalid `groups`: expected at most the number of channels \(10\)\. "
                                         r"Received: groups=32 with 10 channels"):
        normlab.EvoNormS0()(np.zeros((2, 3, 10), "float32"))
    with pytest.raises(ValueError, match=r"Invalid `group_size`: expected a divisor of the number of channels \(10\)\. "
                                         r"Received: group_size=4 with 10 channels \(axis=-1\)\. Use one of \[1, 2, 5, 10\]"):
        normlab.EvoNormS0(group_size=4)(np.zeros((2, 3, 10), "float32"))
    with pytest.raises(ValueError, match=r"Invalid `group_size`: expected a positive integer \(channels per group\) or None\. "
                                         r"Received: group_size=0"):
        normlab.EvoNormS0(group_size=0)
    with pytest.raises(ValueError, match=r"Invalid `momentum`: expected a float in \[0, 1\].*Received: momentum=1\.5"):
        normlab.EvoNormB0(momentum=1.5)
