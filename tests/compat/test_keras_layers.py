"""normlab.compat.keras_layers.convert: Keras' normalization layers in an
existing model replaced by normlab's, weights and state kept, the original
untouched."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import normlab
from normlab.compat import keras_layers

to_numpy = keras.ops.convert_to_numpy
KERAS_NORMS = tuple(keras_layers.REPLACEMENTS)


def _model() -> keras.Model:
    """Every replaced class, a residual branch, a frozen layer, a nested Sequential."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    branch = keras.layers.GroupNormalization(groups=-1, name="in")(x)
    x = keras.layers.Add(name="add")([x, keras.layers.GroupNormalization(groups=4, name="gn")(branch)])
    x = keras.Sequential([keras.layers.Conv2D(4, 1, name="inner_conv"),
                          keras.layers.BatchNormalization(name="inner_bn", trainable=False)], name="block")(x)
    x = keras.layers.LayerNormalization(axis=[1, 2, 3], name="ln")(x)
    x = keras.layers.RMSNormalization(name="rms")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    rng = np.random.default_rng(0)
    for weight in model.weights:  # weights a fresh model does not have: trained, moving statistics
        value = rng.uniform(0.5, 1.5, weight.shape) if "variance" in weight.name else rng.normal(size=weight.shape)
        weight.assign(value.astype(weight.dtype))
    return model


def _inputs(offset=0.0):
    return (offset + np.random.default_rng(1).normal(size=(4, 6, 6, 3))).astype("float32")


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def test_every_keras_norm_is_replaced_by_normlabs_class_of_the_same_name():
    model = _model()
    converted = keras_layers.convert(model)
    before, after = ({la.name: la for la in _layers(m) if la.weights} for m in (model, converted))
    assert sorted(before) == sorted(after)
    for name, layer in before.items():
        if type(layer) in KERAS_NORMS:
            assert type(after[name]) is keras_layers.REPLACEMENTS[type(layer)], name
            assert after[name].get_config()["epsilon"] == layer.get_config()["epsilon"]
        elif not isinstance(layer, keras.Model):
            assert type(after[name]) is type(layer), name
    assert converted.count_params() == model.count_params()
    assert not after["inner_bn"].trainable
    assert len(converted.trainable_weights) == len(model.trainable_weights)


@pytest.mark.parametrize("training", [False, True])
def test_outputs_match_keras(training):
    model = _model()
    converted = keras_layers.convert(model)
    x = _inputs()
    np.testing.assert_allclose(to_numpy(converted(x, training=training)), to_numpy(model(x, training=training)),
                               rtol=1e-4, atol=1e-4)


def test_weights_and_moving_statistics_are_copied_not_shared():
    model = _model()
    converted = keras_layers.convert(model)
    clones = {la.name: la for la in _layers(converted)}
    checked = 0
    for layer in _layers(model):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        clone = clones[layer.name]
        assert len(clone.weights) == len(layer.weights), layer.name
        for a, b in zip(layer.weights, clone.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
            assert a is not b
        checked += 1
    assert checked == 9  # every layer with weights, the nested Sequential's included
    rms = converted.get_layer("rms")  # both name the weight "scale" (normlab's ``gamma`` is the same variable)
    np.testing.assert_array_equal(to_numpy(rms.scale), to_numpy(model.get_layer("rms").scale))
    assert rms.gamma is rms.scale


@pytest.mark.parametrize("mode", ["int8", "float8"])
def test_quantized_models_convert_and_back(mode):
    """A float8 Dense rebuilt from its config creates its scales before its kernel: copying
    its weights by position (as Keras' clone_model then set_weights) failed on a shape."""
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.LayerNormalization(),
                              keras.layers.Dense(4)])
    model.quantize(mode)
    y = to_numpy(model(x))
    converted = keras_layers.convert(model)
    assert type(converted.layers[1]) is normlab.LayerNormalization
    np.testing.assert_allclose(to_numpy(converted(x)), y, atol=1e-6)
    np.testing.assert_allclose(to_numpy(keras_layers.to_keras(converted)(x)), y, atol=1e-6)


def test_the_original_model_is_left_as_it_was():
    model = _model()
    weights = [to_numpy(w).copy() for w in model.weights]
    keras_layers.convert(model)
    assert all(type(layer) is not keras_layers.REPLACEMENTS.get(type(layer)) for layer in _layers(model))
    assert type(model.get_layer("bn")) is keras.layers.BatchNormalization
    for before, weight in zip(weights, model.weights):
        np.testing.assert_array_equal(before, to_numpy(weight))


def test_the_converted_model_trains_apart_from_the_original_and_saves_as_normlab():
    model = _model()
    converted = keras_layers.convert(model)
    x, y = _inputs(), np.zeros((4, 2), "float32")
    before = [to_numpy(w).copy() for w in converted.weights]
    for m in (model, converted):  # the original first: its training step must not touch the copy's buffers
        m.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    for was, weight in zip(before, converted.weights):
        np.testing.assert_array_equal(was, to_numpy(weight))
    converted.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(pytest.importorskip("tempfile").mkdtemp(), "converted.keras")
    converted.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.get_layer("gn")) is normlab.GroupNormalization
    np.testing.assert_allclose(to_numpy(reloaded(x)), to_numpy(converted(x)), rtol=1e-5, atol=1e-5)


def test_a_subset_of_classes():
    converted = keras_layers.convert(_model(), layers=["GroupNormalization"])
    assert type(converted.get_layer("gn")) is normlab.GroupNormalization
    assert type(converted.get_layer("in")) is normlab.GroupNormalization
    assert type(converted.get_layer("bn")) is keras.layers.BatchNormalization
    assert type(converted.get_layer("rms")) is keras.layers.RMSNormalization


def test_a_subset_given_as_one_name_or_as_several():
    one = keras_layers.convert(_model(), layers="BatchNormalization")  # one name, not its letters
    assert type(one.get_layer("bn")) is normlab.BatchNormalization
    assert type(one.get_layer("gn")) is keras.layers.GroupNormalization
    two = keras_layers.convert(_model(), layers=["GroupNormalization", "RMSNormalization"])
    assert type(two.get_layer("gn")) is normlab.GroupNormalization
    assert type(two.get_layer("rms")) is normlab.RMSNormalization
    assert type(two.get_layer("bn")) is keras.layers.BatchNormalization


def test_subclasses_of_keras_norms_are_kept():
    class MyNorm(keras.layers.BatchNormalization):
        pass

    model = keras.Sequential([keras.Input((4,)), MyNorm(name="mine"), keras.layers.BatchNormalization(name="bn")])
    converted = keras_layers.convert(model)
    assert type(converted.get_layer("mine")) is MyNorm
    assert type(converted.get_layer("bn")) is normlab.BatchNormalization


def test_mixed_precision_policy_is_kept():
    model = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.GroupNormalization(2, dtype="mixed_bfloat16")])
    layer = keras_layers.convert(model).layers[0]
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert layer.gamma.dtype == "float32"


def test_keras_applications_model_matches():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)
    converted = keras_layers.convert(model)
    assert sum(type(layer) is normlab.BatchNormalization for layer in converted.layers) == 52
    x = _inputs(offset=2.0)[:, :, :, :3].repeat(6, axis=1)[:, :32].repeat(6, axis=2)[:, :, :32]
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), rtol=1e-4, atol=1e-5)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match=r"Invalid `layers`.*Remove \['BatchNorm'\]"):
        keras_layers.convert(_model(), layers=["BatchNorm"])

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    with pytest.raises(ValueError, match=r"Invalid `model`.*Received: a Subclassed.*__init__"):
        keras_layers.convert(Subclassed())


# --------------------------------------------------------------------------
# to_keras: the way back, for tools that know only Keras' built-in layers.


def test_to_keras_round_trip_gives_keras_classes_weights_and_outputs_back():
    model = _model()
    back = keras_layers.to_keras(keras_layers.convert(model))
    for layer in _layers(model):
        if layer.weights and not isinstance(layer, keras.Model):
            clone = {la.name: la for la in _layers(back)}[layer.name]
            assert type(clone) is type(layer), layer.name
            for a, b in zip(layer.weights, clone.weights):
                np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    x = _inputs()
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(model(x)), rtol=1e-4, atol=1e-4)
    assert not back.get_layer("block").get_layer("inner_bn").trainable


def test_to_keras_takes_normlab_models_and_keeps_other_normlab_layers():
    model = keras.Sequential([keras.Input((6, 6, 4)), normlab.GroupNormalization(2, name="gn"),
                              normlab.InstanceNormalization(name="in"), normlab.RMSNormalization(name="rms")])
    back = keras_layers.to_keras(model)
    assert type(back.get_layer("gn")) is keras.layers.GroupNormalization
    assert type(back.get_layer("in")) is normlab.InstanceNormalization  # no Keras class of that name
    rms = back.get_layer("rms")
    assert type(rms) is keras.layers.RMSNormalization
    np.testing.assert_array_equal(to_numpy(rms.scale), to_numpy(model.get_layer("rms").gamma))


@pytest.mark.parametrize("layer, argument", [
    (normlab.BatchNormalization(virtual_batch_size=2, name="vbn"), "virtual_batch_size=2"),
    (normlab.RMSNormalization(center=True, name="rms"), "center=True"),
    (normlab.RMSNormalization(gamma_regularizer="l2", name="rms"), "gamma_regularizer="),
])
def test_to_keras_refuses_arguments_keras_lacks(layer, argument):
    model = keras.Sequential([keras.Input((6, 4)), layer])
    with pytest.raises(ValueError, match=rf"layer '{layer.name}' to keras.layers.{type(layer).__name__}: "
                                         rf"it has {argument}"):
        keras_layers.to_keras(model)
    assert type(keras_layers.to_keras(model, layers=[]).layers[0]) is type(layer)  # kept where asked


def test_to_keras_drops_initializers_keras_lacks_and_copies_the_weights():
    layer = normlab.RMSNormalization(gamma_initializer="zeros", name="rms")
    model = keras.Sequential([keras.Input((6, 4)), layer])
    layer.gamma.assign(np.arange(1, 5, dtype="float32"))
    rms = keras_layers.to_keras(model).get_layer("rms")
    assert type(rms) is keras.layers.RMSNormalization
    np.testing.assert_array_equal(to_numpy(rms.scale), np.arange(1, 5, dtype="float32"))


@pytest.mark.parametrize("axis", [1, [1, 3], -3])
def test_to_keras_refuses_rms_norm_over_axes_keras_cannot_normalize(axis):
    model = keras.Sequential([keras.Input((3, 4, 5)), normlab.RMSNormalization(axis=axis, name="rms")])
    with pytest.raises(ValueError, match=r"Cannot convert layer 'rms' to keras.layers.RMSNormalization: it normalizes "
                                         r"over axis=.* of a rank-4 input, and Keras' class supports only trailing axes"):
        keras_layers.to_keras(model)


@pytest.mark.parametrize("axis", [-1, [2, 3], [-2, -1], [1, 2, 3]])
def test_to_keras_converts_rms_norm_over_trailing_axes(axis):
    model = keras.Sequential([keras.Input((3, 4, 5)), normlab.RMSNormalization(axis=axis, name="rms")])
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    back = keras_layers.to_keras(model)
    assert type(back.get_layer("rms")) is keras.layers.RMSNormalization
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(model(x)), atol=1e-6)


@pytest.mark.parametrize("axis, error", [(-1, None), ([-2, -1], None), ([-2], "of an input not seen yet"),
                                         ([2], "it has not been called")])
def test_to_keras_takes_an_rms_norm_never_called(axis, error):
    """It read layer.input, which a layer never called lacks: an AttributeError."""
    model = keras.Sequential([keras.layers.Dense(5), normlab.RMSNormalization(axis=axis, name="rms")])
    if error:
        with pytest.raises(ValueError, match=rf"Cannot convert layer 'rms'.*{error}"):
            keras_layers.to_keras(model)
    else:
        assert type(keras_layers.to_keras(model).get_layer("rms")) is keras.layers.RMSNormalization


def test_axis_lists_mixing_signs_are_refused_with_the_reason():
    model = keras.Sequential([keras.Input((3, 5, 4)), normlab.LayerNormalization(axis=[-1, 1], name="ln")])
    with pytest.raises(ValueError, match=r"Cannot convert layer 'ln'.*mixes negative and non-negative axes.*"
                                         r"give every axis as a non-negative position"):
        keras_layers.to_keras(model)
    keras_model = keras.Sequential([keras.Input((3, 5, 4)), keras.layers.LayerNormalization(axis=[-1, 1], name="ln")])
    with pytest.raises(ValueError, match=r"mixes negative and non-negative axes"):
        keras_layers.convert(keras_model)
    nested = keras.Sequential([keras.Input((3, 5, 4)), keras.Sequential(
        [keras.layers.LayerNormalization(axis=[-1, 1], name="ln")], name="block")])
    with pytest.raises(ValueError, match=r"Cannot convert layer 'ln'.*mixes negative and non-negative axes"):
        keras_layers.convert(nested)  # inside a nested model too


@pytest.mark.parametrize("swap", ["convert", "to_keras"])
def test_an_adapted_normalization_keeps_the_statistics_it_uses(swap):
    """EfficientNet's preprocessing Normalization: its adapted mean and variance were
    copied, but the statistics it applies (set from them where Keras loads weights)
    stayed 0 and 1 on TensorFlow and JAX: outputs 6.7 off."""
    rng = np.random.default_rng(0)
    normalization = keras.layers.Normalization(name="norm")
    normalization.adapt(rng.normal(5.0, 3.0, size=(64, 4)).astype("float32"))
    inputs = keras.Input((4,))
    original = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(normalization(inputs)))
    swapped = keras_layers.convert(original)
    if swap == "to_keras":
        swapped = keras_layers.to_keras(swapped)
    x = rng.normal(5.0, 3.0, size=(3, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(swapped(x)), to_numpy(original(x)), rtol=1e-6, atol=1e-6)


def test_frozen_nested_and_top_level_models_keep_their_own_flag():
    """clone_model makes a functional model trainable (its flag is not in its config);
    the layers inside kept theirs, so only code reading the flag saw it wrong."""
    inner_inputs = keras.Input((4,))
    inner = keras.Model(inner_inputs, keras.layers.BatchNormalization()(keras.layers.Dense(4)(inner_inputs)),
                        name="inner")
    inner.trainable = False
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    converted = keras_layers.convert(model)
    assert converted.get_layer("inner").trainable is False
    assert converted.trainable is True
    assert len(converted.trainable_weights) == len(model.trainable_weights) == 2
    model.trainable = False
    frozen = keras_layers.to_keras(keras_layers.convert(model))
    assert frozen.trainable is False and frozen.get_layer("inner").trainable is False
    assert not frozen.trainable_weights


def test_an_adapted_lookup_layer_keeps_its_vocabulary():
    """An adapted vocabulary is an asset, not a weight (a .keras file keeps it):
    the converted model's lookup layer had none ("[UNK]" only; a string lookup
    then failed on TensorFlow: its table was never initialized)."""
    lookup = keras.layers.IntegerLookup(name="lookup")
    lookup.adapt(np.array([7, 3, 3, 11, 7, 7]))
    inputs = keras.Input((2,), dtype="int64")
    embedded = keras.layers.Embedding(lookup.vocabulary_size(), 4, name="embedding")(lookup(inputs))
    model = keras.Model(inputs, keras.layers.LayerNormalization(name="ln")(embedded))
    x = np.array([[7, 11], [3, 5]])
    nested_inputs = keras.Input((2,), dtype="int64")  # also inside a nested model with no weights
    nested = keras.Model(nested_inputs, lookup(nested_inputs), name="nested")
    outer_inputs = keras.Input((2,), dtype="int64")
    outer = keras.Model(outer_inputs, keras.layers.LayerNormalization()(keras.layers.Embedding(
        lookup.vocabulary_size(), 4)(nested(outer_inputs))))
    copied = keras_layers.convert(outer).get_layer("nested").get_layer("lookup")
    assert copied.get_vocabulary() == lookup.get_vocabulary()
    for swapped in (keras_layers.convert(model), keras_layers.to_keras(keras_layers.convert(model))):
        assert swapped.get_layer("lookup").get_vocabulary() == lookup.get_vocabulary()
        np.testing.assert_allclose(to_numpy(swapped(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="string tensors")
def test_an_adapted_text_vectorization_keeps_its_vocabulary():
    vectorize = keras.layers.TextVectorization(output_sequence_length=3, name="vectorize")
    vectorize.adapt(["the cat sat", "the dog ran", "a cat ran"])
    inputs = keras.Input((1,), dtype="string")
    h = keras.layers.Embedding(vectorize.vocabulary_size(), 4)(vectorize(inputs))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(h))
    x = np.array([["the cat ran"], ["a dog sat"]])
    converted = keras_layers.convert(model)
    assert converted.get_layer("vectorize").get_vocabulary() == vectorize.get_vocabulary()
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)
