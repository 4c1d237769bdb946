"""LayerNormalization: harness, Keras anchors (axis=1 on NHWC, axis lists), reference."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test


@pytest.mark.parametrize(
    "kwargs, shape, params",
    [
        (dict(axis=1, center=True, scale=True), (2, 6, 5, 10), 12),  # axis=1 on NHWC: over H
        (dict(axis=-1), (2, 7, 16), 32),
        (dict(axis=[1, 2, 3], center=False), (2, 3, 4, 5), 60),
        (dict(axis=[-2, -1], scale=False), (2, 3, 4), 12),
    ],
)
def test_harness(kwargs, shape, params):
    trainable = int(kwargs.get("center", True)) + int(kwargs.get("scale", True))
    run_layer_test(normlab.LayerNormalization, kwargs, shape, expected_trainable=trainable, expected_params=params)


@pytest.mark.parametrize("axis", [1, -1, [1, 3], [2, 3]])
def test_matches_reference(axis):
    x = np.random.default_rng(0).normal(1, 2, size=(2, 4, 5, 6)).astype("float32")
    layer = normlab.LayerNormalization(axis=axis, gamma_initializer="random_uniform", beta_initializer="random_normal")
    y = ops.convert_to_numpy(layer(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    np.testing.assert_allclose(y, reference.layer_norm(x, axis, gamma, beta), atol=2e-5)


def test_axis_list_is_kept_in_config():
    assert normlab.LayerNormalization(axis=[1, 2]).get_config()["axis"] == [1, 2]
    assert normlab.LayerNormalization(axis=1).get_config()["axis"] == 1


def test_rms_scaling_from_old_configs():
    assert normlab.LayerNormalization.from_config({"axis": -1, "rms_scaling": False}).axis == -1
    assert "rms_scaling" not in normlab.LayerNormalization().get_config()


def test_rms_scaling_does_what_keras_does_with_a_warning():
    # Keras' deprecated mode: x / sqrt(var + epsilon) * gamma, uncentered, gamma only.
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 5, 6)).astype("float32")
    with pytest.warns(UserWarning, match=r"rms_scaling=True\) is deprecated.*RMSNormalization"):
        layer = normlab.LayerNormalization(rms_scaling=True, gamma_initializer="random_uniform")
    with pytest.warns(UserWarning):
        keras_layer = keras.layers.LayerNormalization(rms_scaling=True)
    y = ops.convert_to_numpy(layer(x))
    keras_layer.build(x.shape)
    keras_layer.set_weights(layer.get_weights())
    assert [w.name for w in layer.weights] == ["gamma"]
    gamma = ops.convert_to_numpy(layer.gamma)
    expected = x / np.sqrt(x.astype("float64").var(axis=-1, keepdims=True) + 1e-3) * gamma
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ops.convert_to_numpy(keras_layer(x)), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning):
        clone = normlab.LayerNormalization.from_config(layer.get_config())
    assert clone.rms_scaling


@pytest.mark.filterwarnings("ignore:.*rms_scaling")
@pytest.mark.parametrize("axis", [1, [1, 3], -2])
def test_rms_scaling_puts_gamma_on_the_normalized_axes(axis):
    """gamma of shape (5,) on axis 1 of (2, 5, 6, 7) broadcasts there, not on the last
    axis (which used to fail, or on a square input give a wrong answer silently)."""
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(2, 5, 6, 7)).astype("float32")
    layer = normlab.LayerNormalization(axis=axis, rms_scaling=True, gamma_initializer="random_uniform")
    y = ops.convert_to_numpy(layer(x))
    axes = [a % 4 for a in (axis if isinstance(axis, list) else [axis])]
    shape = [x.shape[a] if a in axes else 1 for a in range(4)]
    gamma = ops.convert_to_numpy(layer.gamma).reshape(shape)
    expected = x / np.sqrt(x.astype("float64").var(axis=tuple(axes), keepdims=True) + 1e-3) * gamma
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    square = np.random.default_rng(3).normal(size=(2, 6, 6)).astype("float32")
    layer = normlab.LayerNormalization(axis=1, rms_scaling=True, gamma_initializer="random_uniform")
    layer.build(square.shape)
    gamma = ops.convert_to_numpy(layer.gamma)
    expected = square / np.sqrt(square.astype("float64").var(axis=1, keepdims=True) + 1e-3) * gamma[:, None]
    np.testing.assert_allclose(ops.convert_to_numpy(layer(square)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [normlab.LayerNormalization, normlab.RMSNormalization])
def test_without_weights_the_normalized_axes_may_have_unknown_sizes(cls):
    """As Keras' LayerNormalization(center=False, scale=False): no weights depend on
    the axes' sizes, so a model on keras.Input((None, None)) builds and runs."""
    inputs = keras.Input((None, None))
    model = keras.Model(inputs, cls(axis=-1, center=False, scale=False)(inputs))
    reference_ = reference.layer_norm if cls is normlab.LayerNormalization else reference.rms_norm
    epsilon = cls().epsilon
    for shape in [(2, 3, 5), (1, 4, 7)]:
        x = np.random.default_rng(0).normal(1.0, 2.0, size=shape).astype("float32")
        np.testing.assert_allclose(ops.convert_to_numpy(model(x)), reference_(x, -1, epsilon=epsilon), atol=1e-5)
        np.testing.assert_allclose(model.predict(x, verbose=0), reference_(x, -1, epsilon=epsilon), atol=1e-5)
    with pytest.raises(ValueError, match="Invalid `axis`: expected feature axes with a known size"):
        cls(axis=-1)(keras.Input((None, None)))


@pytest.mark.parametrize("cls", [normlab.LayerNormalization, normlab.RMSNormalization])
def test_inputs_of_another_rank_when_the_normalized_axes_keep_their_sizes(cls):
    # As Keras' layers: built on (2, 2, 2), called on (10, 2, 2, 2) and (3, 2).
    layer = cls()
    layer.build((2, 2, 2))
    for shape in [(10, 2, 2, 2), (3, 2)]:
        x = np.random.default_rng(0).normal(5.0, 10.0, size=shape).astype("float32")
        expected = cls()(x)
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(expected), atol=1e-5)
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 2"):
        layer(np.zeros((4, 3), "float32"))
    axes = cls(axis=[1, 2])
    axes.build((None, 3, 4))
    assert tuple(axes(np.ones((2, 3, 4, 5), "float32")).shape) == (2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"expected axis 2 of input shape to have value 4"):
        axes(np.ones((2, 3, 5), "float32"))
    # Fewer dimensions that would put a normalized axis on the batch axis: refused
    # (Keras' layers normalize across the batch there; docs/migration.md).
    for axis in (-2, [-2, -1]):
        layer = cls(axis=axis)
        layer.build((2, 3, 4))
        with pytest.raises(ValueError, match=r"expected min_ndim=3, found ndim=2"):
            layer(np.ones((3, 4), "float32"))
