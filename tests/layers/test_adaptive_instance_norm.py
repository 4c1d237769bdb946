"""AdaptiveInstanceNormalization: two inputs, config and saving, training,
masks, dtypes, the registry and the errors."""

import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import BASE_LAYER_ARGS, constructor_args

CONTENT = (4, 6, 5, 3)  # NHWC
STYLE = (4, 3, 4, 3)  # another spatial size


def _pair(seed=0, content=CONTENT, style=STYLE):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5, 2.0, size=content).astype("float32"),
            rng.normal(-1.0, 0.5, size=style).astype("float32"))


def _model(**kwargs):
    """An encoder conv on each input, AdaIN, and a decoder conv: a style-transfer block."""
    content, style = keras.Input(CONTENT[1:], name="content"), keras.Input((None, None, 3), name="style")
    encode = keras.layers.Conv2D(8, 3, padding="same", name="encoder")
    h = normlab.AdaptiveInstanceNormalization(name="adain", **kwargs)([encode(content), encode(style)])
    return keras.Model([content, style], keras.layers.Conv2D(3, 3, padding="same", name="decoder")(h))


@pytest.mark.parametrize("axis, content, style", [(-1, CONTENT, STYLE), (1, (2, 3, 7), (2, 3, 4))])
def test_matches_reference(axis, content, style):
    c, s = _pair(1, content, style)
    layer = normlab.AdaptiveInstanceNormalization(axis=axis, epsilon=1e-3)
    y = ops.convert_to_numpy(layer([c, s]))
    np.testing.assert_allclose(y, reference.adaptive_instance_norm(c, s, axis=axis, epsilon=1e-3),
                               rtol=1e-5, atol=2e-5)
    assert layer.weights == [] and layer.count_params() == 0


def test_symbolic_shape_is_the_contents_and_the_summary_counts_no_weight():
    model = _model()
    assert model.output.shape == (None,) + CONTENT[1:]
    assert model.get_layer("adain").output.shape == (None,) + CONTENT[1:-1] + (8,)
    encoder, decoder = 3 * 3 * 3 * 8 + 8, 3 * 3 * 8 * 3 + 3  # the encoder is shared by both inputs
    assert model.count_params() == encoder + decoder


def test_unknown_channel_counts_are_taken():
    """No weight depends on the channel count: a model on inputs of unknown
    channels builds (it was refused, 'the weights depend on it') and runs on
    any count, as Keras' weightless layers do."""
    content, style = keras.Input((None, None, None)), keras.Input((None, None, None))
    layer = normlab.AdaptiveInstanceNormalization()
    model = keras.Model([content, style], layer([content, style]))
    assert model.output.shape == (None, None, None, None)
    assert layer.compute_output_shape([(None, None, None, None)] * 2) == (None, None, None, None)
    for channels in (3, 5):
        c, s = _pair(2, CONTENT[:-1] + (channels,), STYLE[:-1] + (channels,))
        np.testing.assert_allclose(ops.convert_to_numpy(model([c, s])), reference.adaptive_instance_norm(c, s),
                                   rtol=1e-5, atol=2e-5)
    c, s = _pair(3)
    with pytest.raises(ValueError, match=r"Invalid `style`: expected 3 channels on axis -1"):
        model([c, s[..., :2]])  # counts known when called: still compared


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a graph's unknown sizes")
def test_a_graph_with_unknown_channels_matches_the_reference():
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, None])
    run = tf.function(lambda c, s: normlab.ops.adaptive_instance_norm(c, s), input_signature=[spec, spec])
    c, s = _pair(4)
    np.testing.assert_allclose(run(c, s).numpy(), reference.adaptive_instance_norm(c, s), rtol=1e-5, atol=2e-5)


def test_config_holds_the_constructor_arguments_and_round_trips():
    layer = normlab.AdaptiveInstanceNormalization(axis=1, epsilon=1e-3, name="ada")
    config = layer.get_config()
    assert set(config) - BASE_LAYER_ARGS == constructor_args(normlab.AdaptiveInstanceNormalization)
    assert config["axis"] == 1 and config["epsilon"] == 1e-3
    again = normlab.AdaptiveInstanceNormalization.from_config(config)
    assert again.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(revived, normlab.AdaptiveInstanceNormalization) and revived.get_config() == config


def test_a_keras_file_with_two_inputs_loads_with_the_same_outputs():
    keras.utils.set_random_seed(0)
    model = _model(epsilon=1e-4)
    c, s = _pair(2)
    expected = ops.convert_to_numpy(model([c, s]))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adain.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert loaded.get_layer("adain").get_config() == model.get_layer("adain").get_config()
    np.testing.assert_allclose(ops.convert_to_numpy(loaded([c, s])), expected, rtol=1e-6, atol=1e-6)


def test_fit_trains_the_encoder_and_decoder_through_it():
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    c, s = _pair(3)
    target = reference.adaptive_instance_norm(c, s).astype("float32")  # learn AdaIN on the images themselves
    before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit([c, s], target, epochs=5, batch_size=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(np.any(ops.convert_to_numpy(w) != b) for w, b in zip(model.trainable_weights, before))


def test_the_contents_mask_passes_through_and_the_styles_does_not_matter():
    tokens = keras.Input((5,), dtype="int32")
    content = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    style = keras.layers.Embedding(10, 4)(tokens)
    h = normlab.AdaptiveInstanceNormalization()([content, style])
    pooled = keras.layers.GlobalAveragePooling1D()(h)  # averages the unmasked steps only
    model = keras.Model(tokens, [h, pooled])
    x = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]], "int32")
    h, pooled = (ops.convert_to_numpy(t) for t in model(x))
    np.testing.assert_allclose(pooled[0], h[0, :3].mean(axis=0), rtol=1e-5, atol=1e-6)
    layer = normlab.AdaptiveInstanceNormalization()
    mask = np.array([[True, False]])
    assert layer.compute_mask([None, None], [mask, None]) is mask
    assert layer.compute_mask([None, None], None) is None


def test_mixed_float16_returns_float16_and_stays_finite_beyond_its_range():
    c, s = _pair(4)
    c = (7e4 + 100.0 * c).astype("float32")  # beyond float16's 65504
    expected = reference.adaptive_instance_norm(c, s)
    layer = normlab.AdaptiveInstanceNormalization(dtype="mixed_float16")
    y = layer([c, s])
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y = ops.convert_to_numpy(ops.cast(y, "float32"))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, atol=1e-2, rtol=2e-3)


def test_integer_images_are_computed_in_float32():
    rng = np.random.default_rng(5)
    c = rng.integers(0, 256, size=CONTENT).astype("uint8")
    s = rng.integers(0, 256, size=STYLE).astype("uint8")
    y = normlab.AdaptiveInstanceNormalization()([c, s])
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(y), reference.adaptive_instance_norm(c, s), rtol=1e-5,
                               atol=1e-3)


def test_registry_names_build_it():
    for name in ("adain", "adaptive_instance", "adaptive_instance_norm"):
        layer = normlab.get(f"{name}(epsilon=1e-3)")
        assert isinstance(layer, normlab.AdaptiveInstanceNormalization) and layer.epsilon == 1e-3


def test_errors_name_argument_value_and_fix():
    c, s = _pair(6)
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected a list of two inputs, \[content, style\]\. "
                                         r"Received: one input of shape \(4, 6, 5, 3\)\. Call the layer on both"):
        normlab.AdaptiveInstanceNormalization()(c)
    with pytest.raises(ValueError, match=r"Invalid `inputs`.*Received: 3 inputs of shapes"):
        normlab.AdaptiveInstanceNormalization()([c, s, s])
    with pytest.raises(ValueError, match=r"Invalid `inputs`.*Received: a dict with keys \['content', 'style'\]"):
        normlab.AdaptiveInstanceNormalization()({"content": c, "style": s})
    with pytest.raises(ValueError, match=r"Invalid `style`: expected 3 channels on axis -1.*\(4, 3, 4, 2\)"):
        normlab.AdaptiveInstanceNormalization()([c, s[..., :2]])
    with pytest.raises(ValueError, match=r"Invalid `style`: expected a batch of 4.*or of 1"):
        normlab.AdaptiveInstanceNormalization()([c, s[:2]])
    with pytest.raises(ValueError, match=r"Invalid `content`: expected an input of rank >= 3"):
        normlab.AdaptiveInstanceNormalization()([c[:, 0, 0], s[:, 0, 0]])
    with pytest.raises(ValueError, match=r"Invalid `style`.*Received: style.shape=\(None, 4, 3\)"):
        normlab.AdaptiveInstanceNormalization()([keras.Input(CONTENT[1:]), keras.Input((4, 3))])
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected the channel axis, never the batch axis 0"):
        normlab.AdaptiveInstanceNormalization(axis=0)
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected a single int"):
        normlab.AdaptiveInstanceNormalization(axis=[1, 2])
    with pytest.raises(ValueError, match=r"Invalid `epsilon`.*Received: epsilon=-1"):
        normlab.AdaptiveInstanceNormalization(epsilon=-1.0)
    layer = normlab.AdaptiveInstanceNormalization()
    layer([c, s])
    with pytest.raises(ValueError, match="expected axis 3 of input shape to have value 3"):
        layer([c[..., :2], s[..., :2]])  # Keras' InputSpec, fixed by the first call
