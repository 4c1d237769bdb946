"""The kernel wrappers (WeightNormalization, SpectralNormalization) and Keras' quantization."""

import os
import tempfile
import warnings

import keras
import numpy as np
import pytest

import normlab

X = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
WRAPPERS = {"weight_norm": normlab.WeightNormalization, "spectral_norm": normlab.SpectralNormalization}


def _model(wrapper_class, **kwargs):
    inputs = keras.Input((8,))
    wrapper = wrapper_class(keras.layers.Dense(4), **kwargs)
    model = keras.Model(inputs, keras.layers.Dense(2)(wrapper(inputs)))
    model(X)
    return model, wrapper


def _quantize(model, mode="int8", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "InputLayer does not have a `quantize` method"
        model.quantize(mode, **kwargs)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_a_quantized_wrapped_layer_is_an_error_not_a_wrong_answer(name, mode):
    # model.quantize() reaches the layer inside the wrapper: normalizing its int8 codes gave outputs off by
    # 1.4 to 9.5 on outputs of about 1, silently.
    model, _ = _model(WRAPPERS[name])
    _quantize(model, mode=mode)
    with pytest.raises(ValueError, match=f"quantization_mode='{mode}'.*filters=lambda layer"):
        model(X)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_float8_keeps_a_float_kernel_the_wrapper_normalizes(name):
    """float8 quantizes the kernel on the fly: the wrapper's output is a plain float8 Dense's with the
    normalized kernel."""
    # Without data initialization: the initialized wrapper adds its bias after the float8 product, in float32
    # (0.002 to 0.011 from the plain layer's, whose float8 output includes the bias).
    model, wrapper = _model(WRAPPERS[name], **({"data_init": False} if name == "weight_norm" else {}))
    if name == "weight_norm":
        kernel = normlab.ops.weight_norm(wrapper.layer.kernel, wrapper.g, [0])
    else:
        kernel = wrapper.normalized_kernel()
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    plain.layers[0].set_weights([keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(wrapper.layer.bias)])
    _quantize(model, mode="float8")
    _quantize(plain, mode="float8")
    assert wrapper.layer.quantization_mode == "float8"
    got = keras.ops.convert_to_numpy(wrapper(X, training=False))
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(plain(X, training=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_the_wrapped_layer_left_out_of_quantization_keeps_its_outputs(name):
    model, wrapper = _model(WRAPPERS[name])
    expected = keras.ops.convert_to_numpy(wrapper(X, training=False))
    _quantize(model, filters=lambda layer: layer is not wrapper.layer)
    assert wrapper.layer.quantization_mode is None and model.layers[-1].quantization_mode == "int8"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper(X, training=False)), expected, rtol=1e-6)
    got = keras.ops.convert_to_numpy(model(X, training=False))
    path = os.path.join(tempfile.mkdtemp(), "quantized.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(X, training=False)), got, rtol=1e-5, atol=1e-6)
