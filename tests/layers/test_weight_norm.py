"""WeightNormalization: float64 references, data-dependent init, TF Addons anchors, saving, errors."""

import os
import tempfile
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.ops.weights import weight_norm
from normlab.testing import reference

BACKEND = keras.backend.backend()
# One input shape throughout keeps JAX's per-shape compilations few. Output
# widths differ from the filter count: Keras' own channels-first Conv2D adds
# its bias on the wrong axis under TensorFlow when they are equal (keras.ops.add).
X = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 6, 7, 4)).astype("float32")  # NHWC
X_FIRST = np.transpose(X, (0, 3, 1, 2))


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


def test_forward_is_the_dense_layer_with_g_times_unit_v():
    rng = np.random.default_rng(1)
    x = X  # Dense on the last axis of a 4-D input
    layer = normlab.WeightNormalization(keras.layers.Dense(4, activation="tanh"), data_init=False)
    layer(x)
    g = rng.uniform(0.5, 2.0, size=4).astype("float32")
    v = rng.normal(size=(4, 4)).astype("float32")
    b = rng.normal(size=4).astype("float32")
    layer.set_weights([g, np.array(True), v, b])
    expected = np.tanh(x.astype(np.float64) @ reference.weight_norm(v, g) + b)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, atol=1e-5)
    # the kernel variable still holds v: nothing is written back
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.layer.kernel), v)


def test_conv_channels_first_forward_matches_reference():
    layer = normlab.WeightNormalization(keras.layers.Conv2D(4, 3, data_format="channels_first"), data_init=False)
    layer(X_FIRST)
    g, _, v, b = numpy_weights(layer)
    y = np.transpose(ops.convert_to_numpy(layer(X_FIRST)), (0, 2, 3, 1))
    np.testing.assert_allclose(y, reference.conv(X, reference.weight_norm(v, g), b), atol=1e-4)


def test_data_init_false_starts_as_the_unwrapped_layer():
    # TF Addons' test_forward_pass: g = ||v|| so w = v
    conv = keras.layers.Conv2D(4, 3, bias_initializer="random_normal")
    before = ops.convert_to_numpy(conv(X))
    wrapped = normlab.WeightNormalization(conv, data_init=False)
    np.testing.assert_allclose(ops.convert_to_numpy(wrapped(X)), before, atol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(wrapped.g),
        np.linalg.norm(ops.convert_to_numpy(conv.kernel).reshape(-1, 4), axis=0),
        rtol=1e-6,
    )
    assert bool(ops.convert_to_numpy(wrapped.initialized))


def test_tfa_data_init_anchor():
    # TF Addons' test_with_data_init_is_true: identity kernel, output x / 4
    x = np.array([[[-4.0, -4.0], [4.0, 4.0]]], "float32")
    dense = keras.layers.Dense(2, kernel_initializer="identity", bias_initializer="zeros")
    layer = normlab.WeightNormalization(dense, data_init=True)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=True)), x / 4, atol=1e-6)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_data_init_matches_the_paper(data_format):
    x = X
    conv = keras.layers.Conv2D(4, 3, data_format=data_format, bias_initializer="random_normal",
                               activation="relu")
    layer = normlab.WeightNormalization(conv)
    xin = x if data_format == "channels_last" else X_FIRST
    layer(xin)  # inference: no initialization
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), np.ones(4))
    v = ops.convert_to_numpy(conv.kernel)
    y = ops.convert_to_numpy(layer(xin, training=True))
    t = reference.conv(x, reference.weight_norm(v))  # pre-activations, float64, channels-last
    g, b = reference.weight_norm_data_init(t)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g), g, rtol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(conv.bias), b, atol=1e-4)
    if data_format == "channels_first":
        y = np.transpose(y, (0, 2, 3, 1))
    np.testing.assert_allclose(y, np.maximum((t - t.mean((0, 1, 2))) / t.std((0, 1, 2)), 0), atol=1e-4)
    # initialized once: a second training batch changes nothing
    layer(xin * 5.0, training=True)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g), g, rtol=1e-4)


def test_tfa_initialization_differs_when_v_is_not_unit_norm():
    # TF Addons took the statistics with the raw v and the initial bias, so its
    # pre-activations had std 1/||v||; normlab's have std 1 (the paper).
    dense = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(2.0), use_bias=False)
    y = ops.convert_to_numpy(normlab.WeightNormalization(dense)(X, training=True)).reshape(-1, 4)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)  # TF Addons: 1 / ||v|| = 1 / 4


def test_fit_updates_g_v_and_bias_after_an_eager_initialization():
    wn = normlab.WeightNormalization(keras.layers.Conv2D(4, 3))
    model = keras.Sequential([keras.Input(X.shape[1:]), wn, keras.layers.GlobalAveragePooling2D()])
    model(X, training=True)  # the data-dependent initialization, eagerly (required on JAX)
    before = numpy_weights(wn)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(X, np.ones((4, 4), "float32"), batch_size=4, epochs=1, verbose=0)
    after = numpy_weights(wn)
    for name, a, b in zip(["g", "initialized", "kernel", "bias"], before, after):
        assert name == "initialized" or not np.allclose(a, b), f"{name} was not trained"


@pytest.mark.skipif(BACKEND == "jax", reason="JAX fit discards forward-pass updates of trainable weights")
def test_data_init_happens_inside_fit():
    wn = normlab.WeightNormalization(keras.layers.Dense(4))
    model = keras.Sequential([keras.Input(X.shape[1:]), wn])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(X, np.zeros(X.shape, "float32"), batch_size=4, epochs=1, verbose=0)
    assert bool(ops.convert_to_numpy(wn.initialized))
    y = ops.convert_to_numpy(model(X)).reshape(-1, 4)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.skipif(BACKEND != "jax", reason="only JAX drops the initialization inside fit")
def test_jax_fit_warns_when_the_initialization_cannot_happen():
    model = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(keras.layers.Dense(4))])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(UserWarning, match=r"Call the model once eagerly first"):
        model.fit(X, np.zeros(X.shape), epochs=1, verbose=0)
    eager = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(keras.layers.Dense(4))])
    eager(X, training=True)
    eager.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        eager.fit(X, np.zeros(X.shape), epochs=1, verbose=0)


def test_config_serialization_and_keras_saving():
    x = X
    wn = normlab.WeightNormalization(keras.layers.Conv2D(4, 3, activation="relu"), data_init=True, name="wn")
    config = wn.get_config()
    assert set(config) == {"layer", "data_init", "name", "trainable", "dtype"}
    assert config["layer"]["class_name"] == "Conv2D" and config["data_init"] is True
    model = keras.Sequential([keras.Input(X.shape[1:]), wn])
    model(x, training=True)
    y = ops.convert_to_numpy(model(x))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wn))
    assert type(restored) is normlab.WeightNormalization and restored.data_init
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wn.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), y, atol=1e-6)
    layer = loaded.layers[0]
    assert bool(ops.convert_to_numpy(layer.initialized))
    g = ops.convert_to_numpy(layer.g)
    layer(x * 3.0, training=True)  # no second initialization after loading
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), g)


def test_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    wn = normlab.WeightNormalization(keras.layers.Conv2D(4, 3))
    y = wn(X, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert all(keras.backend.standardize_dtype(w.dtype) in ("float32", "bool") for w in wn.weights)
    y = ops.convert_to_numpy(y).astype("float32")
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-2)


def test_weight_norm_op():
    rng = np.random.default_rng(10)
    v = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    g = rng.uniform(size=4).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(weight_norm(v, g)), reference.weight_norm(v, g), atol=1e-6)
    zero = ops.convert_to_numpy(weight_norm(np.zeros((2, 3), "float32")))
    np.testing.assert_array_equal(zero, 0.0)  # epsilon keeps a zero kernel finite


def test_registry_wraps_the_given_layer():
    dense = keras.layers.Dense(3)
    layer = normlab.get("wn(data_init=False)", layer=dense)
    assert type(layer) is normlab.WeightNormalization and layer.layer is dense and not layer.data_init
    assert "not an activation norm" in normlab.registry()["weight_norm"].summary


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: normlab.WeightNormalization("dense"), TypeError,
         r"Invalid `layer`: expected a Keras layer instance to wrap \(Dense, Conv1D, Conv2D, Conv3D\)\. "
         r"Received: layer='dense' of type str\. Pass a layer instance"),
        (lambda: normlab.WeightNormalization(keras.layers.LayerNormalization()), ValueError,
         r"Invalid `layer`: expected one of Dense, Conv1D, Conv2D, Conv3D.*"
         r"Received: layer=LayerNormalization\(name='layer_normalization.*'\)\. Wrap a supported layer"),
        (lambda: normlab.WeightNormalization(keras.layers.Dense(2), data_init="yes"), TypeError,
         r"Invalid `data_init`: expected a bool\. Received: data_init='yes' of type str\. Pass data_init=True"),
        (lambda: normlab.get("weight_norm"), ValueError,
         r"Invalid `layer`: expected the layer to modify.*'weight_norm' is not an activation norm.*"
         r"Received: layer=None\."),
        (lambda: weight_norm(np.ones((2, 3), "float32"), g=np.ones(2, "float32")), ValueError,
         r"Invalid `g`: expected one value per output unit.*Received: g\.shape=\(2,\)"),
    ],
)
def test_errors_name_argument_value_expectation_and_fix(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()
