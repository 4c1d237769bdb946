"""DynamicTanh: harness, float64 reference, the paper's weight layout, masks, registry, errors."""

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


@pytest.mark.parametrize(
    "kwargs, shape, trainable",
    [
        (dict(), LAST4, 3),
        (dict(axis=1, center=False, alpha_init_value=0.2), FIRST3, 2),
        (dict(axis=[1, 2], scale=False), LAST4, 2),
    ],
)
def test_harness(kwargs, shape, trainable):
    run_layer_test(normlab.DynamicTanh, kwargs, shape, expected_trainable=trainable)


@pytest.mark.parametrize("axis", [1, -1, [1, 2]])
def test_matches_reference_any_axis(axis):
    x = np.random.default_rng(2).normal(0.5, 3.0, size=LAST4).astype("float32")
    layer = normlab.DynamicTanh(axis=axis, alpha_init_value=0.3, gamma_initializer="random_uniform",
                                beta_initializer="random_normal")
    y = ops.convert_to_numpy(layer(x))
    alpha, gamma, beta = (ops.convert_to_numpy(w) for w in (layer.alpha, layer.gamma, layer.beta))
    np.testing.assert_allclose(y, reference.dynamic_tanh(x, alpha, axis, gamma, beta), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha_init_value", [0.5, 0.1, 2.0])
def test_alpha_starts_at_alpha_init_value(alpha_init_value):
    x = np.random.default_rng(3).normal(0.0, 2.0, size=LAST4).astype("float32")
    layer = normlab.DynamicTanh(alpha_init_value=alpha_init_value)
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.alpha), [alpha_init_value], rtol=1e-7)
    np.testing.assert_allclose(y, np.tanh(alpha_init_value * x.astype("float64")), rtol=1e-6, atol=1e-6)


def test_alpha_regularizer_and_constraint_act_on_alpha():
    """``alpha_regularizer`` adds its loss on alpha, and ``alpha_constraint`` projects
    alpha after an optimizer step."""
    layer = normlab.DynamicTanh(alpha_init_value=0.5, alpha_regularizer=keras.regularizers.L2(0.25),
                                alpha_constraint=keras.constraints.NonNeg())
    layer.build(LAST4)
    np.testing.assert_allclose(sum(float(ops.convert_to_numpy(loss)) for loss in layer.losses), 0.25 * 0.5**2,
                               rtol=1e-6)
    keras.optimizers.SGD(1.0).apply([ops.ones((1,))], [layer.alpha])  # 0.5 - 1 < 0
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.alpha), [0.0])


def test_weights_in_the_papers_order_and_shapes():
    """The paper's DynamicTanh(C) holds alpha (1,), weight (C,), bias (C,):
    its state dict's values load with set_weights as they are."""
    layer = normlab.DynamicTanh()
    layer.build((2, 7, 16))
    assert [w.path.split("/")[-1] for w in layer.weights] == ["alpha", "gamma", "beta"]
    state = [np.array([0.8], "float32"), np.linspace(0.5, 1.5, 16, dtype="float32"),
             np.linspace(-1, 1, 16, dtype="float32")]
    layer.set_weights(state)
    x = np.random.default_rng(0).normal(size=(2, 7, 16)).astype("float32")
    expected = np.tanh(0.8 * x) * state[1] + state[2]
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, rtol=1e-6, atol=1e-6)


def test_initial_output_is_tanh_of_half_the_input_and_the_same_in_training():
    x = np.random.default_rng(1).normal(0.0, 4.0, size=LAST4).astype("float32")
    layer = normlab.DynamicTanh()
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), np.tanh(0.5 * x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x, training=True)), ops.convert_to_numpy(layer(x)))


def test_alpha_learns():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), normlab.DynamicTanh(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    model.fit(x, x.sum(axis=1, keepdims=True), epochs=1, batch_size=32, verbose=0)
    assert float(ops.convert_to_numpy(model.layers[1].alpha)[0]) != 0.5


def test_a_mask_passes_through_to_the_next_layer():
    """Elementwise, so the mask is the input's: a masked mean after it skips the padded steps."""
    x = np.random.default_rng(3).normal(size=(2, 5, 4)).astype("float32")
    x[0, 3:] = 0.0  # padding
    inputs = keras.Input((5, 4))
    h = normlab.DynamicTanh()(keras.layers.Masking(mask_value=0.0)(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(h)  # uses the mask when there is one
    y = ops.convert_to_numpy(keras.Model(inputs, pooled)(x))
    np.testing.assert_allclose(y[0], np.tanh(0.5 * x[0, :3]).mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[1], np.tanh(0.5 * x[1]).mean(axis=0), rtol=1e-5, atol=1e-6)


def test_config_holds_the_constructor_arguments_and_no_epsilon():
    layer = normlab.DynamicTanh(axis=[1, 2], alpha_init_value=0.1, alpha_regularizer="l2", alpha_constraint="non_neg")
    config = layer.get_config()
    assert "epsilon" not in config
    assert (config["axis"], config["alpha_init_value"]) == ([1, 2], 0.1)
    again = normlab.DynamicTanh.from_config(config)
    assert again.get_config() == config


def test_registry():
    layer = normlab.get("dyt(alpha_init_value=0.2, axis=1)")
    assert isinstance(layer, normlab.DynamicTanh)
    assert (layer.axis, layer.alpha_init_value) == (1, 0.2)
    assert isinstance(normlab.get("dynamic_tanh"), normlab.DynamicTanh)


def test_errors_name_argument_value_and_fix():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"Invalid `alpha_init_value`: expected a (number > 0\.0|finite number)\. "
                                             r"Received: alpha_init_value=.*Use a value such as alpha_init_value=0\.5"):
            normlab.DynamicTanh(alpha_init_value=bad)
    with pytest.raises(TypeError, match=r"Invalid `alpha_init_value`.*Received: alpha_init_value='0.5' of type str"):
        normlab.DynamicTanh(alpha_init_value="0.5")
    with pytest.raises(TypeError, match=r"Invalid `alpha_init_value`: expected a real number"):
        normlab.DynamicTanh(alpha_init_value=np.ones(1, "float32"))
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected feature axes other than the batch axis 0"):
        normlab.DynamicTanh(axis=0)
    with pytest.raises(TypeError, match=r"Invalid `center`: expected a bool"):
        normlab.DynamicTanh(center="no")
    with pytest.raises(ValueError, match=r"Invalid `alpha_regularizer`"):
        normlab.DynamicTanh(alpha_regularizer="l3")
    # No epsilon (nothing is divided): refused as Keras refuses any unknown argument, not by the base
    # class's own epsilon colliding ("got multiple values for keyword argument", naming the base class).
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments passed to DynamicTanh: "
                                         r"\{'epsilon': 0\.001\}.*takes no epsilon: remove it"):
        normlab.DynamicTanh(epsilon=1e-3)
