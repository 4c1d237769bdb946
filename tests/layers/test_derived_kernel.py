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


_ACTIVITY_WRAPPERS = {
    "weight_norm": lambda layer: normlab.WeightNormalization(layer, data_init=False),
    "weight_norm_data_init": lambda layer: normlab.WeightNormalization(layer, data_init=True),
    "spectral_norm": lambda layer: normlab.SpectralNormalization(layer),
    "spectral_norm_in_place": lambda layer: normlab.SpectralNormalization(layer, in_place=True),
}
_ACTIVITY_LAYERS = {
    "dense": (lambda **kw: keras.layers.Dense(4, activation="relu", bias_initializer=keras.initializers.Constant(3.0),
                                              **kw), X),
    "conv_channels_first": (lambda **kw: keras.layers.Conv2D(3, 2, data_format="channels_first", activation="tanh",
                                                             bias_initializer="ones", **kw),
                            np.random.default_rng(1).normal(size=(2, 2, 5, 5)).astype("float32")),
    "embedding": (lambda **kw: keras.layers.Embedding(10, 4, **kw), np.array([[1, 2, 3], [4, 5, 9]])),
}


@pytest.mark.parametrize("layer", sorted(_ACTIVITY_LAYERS))
@pytest.mark.parametrize("wrapper", sorted(_ACTIVITY_WRAPPERS))
def test_the_wrapped_layers_activity_regularizer_sees_its_output(wrapper, layer):
    """As Keras' ``__call__`` adds it: once per call, on the output (bias and
    activation included), divided by the batch size. It was computed on the
    kernel product, before the bias and the activation (0.6477 where Keras'
    SpectralNormalization gives 0.55), and twice in a data-initializing call."""
    if wrapper.startswith("weight_norm") and layer == "embedding":
        pytest.skip("WeightNormalization takes layers with a kernel")
    make, x = _ACTIVITY_LAYERS[layer]
    wrapped = _ACTIVITY_WRAPPERS[wrapper](make(activity_regularizer=keras.regularizers.L2(0.01)))
    for _ in range(2):  # the first call builds (and may initialize), the second does neither
        y = keras.ops.convert_to_numpy(wrapped(x, training=True))
        assert len(wrapped.losses) == 1
        expected = 0.01 * np.sum(y.astype("float64") ** 2) / len(x)
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(wrapped.losses[0])), expected, rtol=1e-5)


def test_in_place_spectral_norm_adds_keras_activity_loss():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(4, activation="relu", bias_initializer=keras.initializers.Constant(3.0),
                               activity_regularizer="l2")
    ours = normlab.SpectralNormalization(dense, in_place=True)
    theirs = keras.layers.SpectralNormalization(keras.layers.Dense.from_config(dense.get_config()))
    ours.build(X.shape), theirs.build(X.shape)
    theirs.set_weights(ours.get_weights())
    ours(X, training=True), theirs(X, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours.losses[0]),
                               keras.ops.convert_to_numpy(theirs.losses[0]), rtol=1e-5)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("conv", [keras.layers.Conv1D, keras.layers.Conv2D])
def test_a_channels_first_convolution_keeps_its_input_check(wrapper, conv):
    """On TensorFlow's CPU the wrapped channels-first convolution runs channels-last, its
    input spec set aside: 4 channels into a kernel built for 2 ran as a grouped convolution,
    silently (Keras' own layer, and every other backend, raise)."""
    spatial = (6,) * (2 if conv is keras.layers.Conv2D else 1)
    layer = WRAPPERS[wrapper](conv(4, 2, data_format="channels_first"))
    layer(np.ones((3, 2, *spatial), "float32"))
    with pytest.raises(ValueError, match=r"expected axis 1 of input shape to have value 2"):
        layer(np.ones((3, 4, *spatial), "float32"))


def test_the_input_check_is_keras_own_on_every_backend():
    from normlab import _compat

    conv = keras.layers.Conv1D(4, 2, data_format="channels_first")
    conv(np.ones((3, 2, 6), "float32"))
    _compat.check_input_spec(conv, np.ones((1, 2, 5), "float32"))
    with pytest.raises(ValueError, match=r"of layer '.*' is incompatible with the layer: expected axis 1"):
        _compat.check_input_spec(conv, np.ones((1, 3, 5), "float32"))


@pytest.mark.parametrize("make", [
    lambda: normlab.StdConv2D(4, 3, activation="relu", bias_initializer="ones"),
    lambda: normlab.ScaledStdConv2D(4, 3, activation="relu", bias_initializer="ones"),
    lambda: normlab.WeightNormalization(keras.layers.Conv2D(4, 3, activation="relu", bias_initializer="ones")),
    lambda: normlab.SpectralNormalization(keras.layers.Conv2D(4, 3, activation="relu", bias_initializer="ones")),
], ids=["std_conv", "scaled_std_conv", "weight_norm", "spectral_norm"])
def test_threads_calling_one_layer_get_their_own_outputs(make):
    """Calls from several threads (a model served from a thread pool) saw each
    other's substituted kernel, bias and activation: most outputs were wrong (795 of
    800 in one run), and the layer could be left with another call's kernel tensor
    and no bias. Keras' own Conv2D gives every thread its output."""
    from concurrent.futures import ThreadPoolExecutor

    layer = make()
    xs = [np.random.default_rng(i).normal(size=(2, 8, 8, 3)).astype("float32") for i in range(4)]

    def run(i):
        return keras.ops.convert_to_numpy(layer(xs[i % 4], training=False))

    expected = [run(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(run, range(200)))
    wrong = sum(not np.allclose(out, expected[i % 4], atol=1e-5) for i, out in enumerate(outputs))
    assert wrong == 0, f"{wrong} of {len(outputs)} outputs differ from the same call alone"
    for i in range(4):
        np.testing.assert_allclose(run(i), expected[i], atol=1e-5)
