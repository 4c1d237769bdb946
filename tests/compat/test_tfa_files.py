"""TF Addons files and configs (normlab.compat.tfa, tfa_config): chunked .h5 attributes, files holding only some of the model's layers or listing layers
without weights, nested models mixing TF Addons and Keras layers, the user's own custom
objects, bare recurrent layers of TF-Keras 2, and TF Addons config values (FRN's epsilon
default, a serialized epsilon, ``autocast``, ``input_shape``)."""

import json
import os
import tempfile

import h5py
import keras
import numpy as np
import pytest

import normlab
from normlab.compat import tfa
from tests.compat.test_tfa import (
    BETA,
    GAMMA,
    IN_BETA,
    IN_GAMMA,
    X,
    keras2_dense,
    keras2_lstm,
    keras2_sequential,
    numpy_,
    tfa_gn,
    tfa_group_norm,
    tfa_wn,
    write_keras2_h5,
)

F32 = lambda a: np.asarray(a, "float32")  # noqa: E731


def _gn_in_model():
    return tfa.model_from_json(json.dumps(keras2_sequential(
        [tfa_gn("gn", 2), tfa_gn("in", 4, class_name="Addons>InstanceNormalization")])))


def test_chunked_name_attributes_are_read_from_the_first_chunk_on():
    """TF-Keras 2 splits a long ``layer_names`` (or ``weight_names``) attribute into
    ``layer_names0``, ``layer_names1``, ...: every chunk is read, the first one included."""
    model = _gn_in_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "chunked.h5")
        with h5py.File(path, "w") as f:
            f.attrs["layer_names0"] = [b"gn"]
            f.attrs["layer_names1"] = [b"in"]
            for name, gamma, beta in (("gn", GAMMA, BETA), ("in", IN_GAMMA, IN_BETA)):
                g = f.create_group(name)
                g.attrs["weight_names0"] = [f"{name}/gamma:0".encode()]
                g.attrs["weight_names1"] = [f"{name}/beta:0".encode()]
                g.create_dataset(f"{name}/gamma:0", data=F32(gamma))
                g.create_dataset(f"{name}/beta:0", data=F32(beta))
        tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(model.get_layer("gn").gamma), F32(GAMMA))
    np.testing.assert_array_equal(numpy_(model.get_layer("in").beta), F32(IN_BETA))


def test_a_file_with_some_of_the_models_layers_loads_them_by_name():
    """Every layer of the file has a namesake in the model: those load, the others keep their
    weights (the docstring's rule; taken in order, the counts differ and it failed)."""
    model = _gn_in_model()
    before = numpy_(model.get_layer("in").gamma)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gn_only.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", F32(GAMMA)), ("gn/beta:0", F32(BETA))]})
        tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(model.get_layer("gn").gamma), F32(GAMMA))
    np.testing.assert_array_equal(numpy_(model.get_layer("in").gamma), before)


def test_layers_the_file_lists_without_weights_are_skipped():
    """TF-Keras 2 lists every layer in ``layer_names``, those without weights (Flatten,
    Activation, ...) with an empty ``weight_names``; they take no part in the matching."""
    config = keras2_sequential([tfa_gn("gn", 2), {"class_name": "Activation", "config": {
        "name": "activation", "trainable": True, "dtype": "float32", "activation": "relu"}}])
    model = tfa.model_from_json(json.dumps(config))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", F32(GAMMA)), ("gn/beta:0", F32(BETA))], "activation": []})
        tfa.load_weights(model, path)
    expected = np.maximum(tfa_group_norm(X, 2, -1, GAMMA, BETA, 1e-3), 0.0)
    np.testing.assert_allclose(numpy_(model(X)), expected, atol=2e-5)


def test_a_nested_model_with_a_tfa_layer_beside_a_keras_layer_needs_names_that_say_whose():
    """Weights of a nested model not named after its layers are taken in order only when no
    TF Addons counterpart is among them: one WeightNormalization beside a Dense is enough to refuse."""
    inner = {"class_name": "Sequential", "config": {"name": "inner", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32",
                                                "sparse": False, "ragged": False, "name": "input_2"}},
        keras2_dense("dense", 4), tfa_wn("wn", keras2_dense("dense_1", 4), data_init=False)]}}
    model = tfa.model_from_json(json.dumps(keras2_sequential([inner], input_shape=(4,))))
    rng = np.random.default_rng(0)
    saved = [("inner/dense/kernel:0", F32(rng.normal(size=(4, 4)))), ("inner/dense/bias:0", F32(np.zeros(4))),
             ("inner/wn/g:0", F32(np.ones(4))), ("inner/wn/kernel:0", F32(rng.normal(size=(4, 4)))),
             ("inner/wn/bias:0", F32(np.zeros(4))), ("inner/wn/initialized:0", np.array(True))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nested.h5")
        write_keras2_h5(path, {"inner": saved})
        with pytest.raises(ValueError, match=r"expected the weights of nested model 'inner' named after its layers "
                                             r"\['dense', 'wn'\]"):
            tfa.load_weights(model, path)


class Scale(keras.layers.Layer):
    """A user's own layer, as a TF-Keras 2 model file names it ("Scale")."""

    def call(self, x):
        return 2.0 * x


def test_the_users_custom_objects_reach_every_loader():
    """A model with the user's own layer loads with ``custom_objects``: from JSON, from a full
    .h5 file, and wrapped in a TF Addons WeightNormalization; their entries win over the
    loaders of the same name."""
    scale = {"class_name": "Scale", "config": {"name": "scale", "trainable": True, "dtype": "float32"}}
    config = keras2_sequential([tfa_gn("gn", 2), scale])
    model = tfa.model_from_json(json.dumps(config), custom_objects={"Scale": Scale})
    assert type(model.get_layer("scale")) is Scale
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", F32(GAMMA)), ("gn/beta:0", F32(BETA))]}, config)
        loaded = tfa.load_model(path, custom_objects={"Scale": Scale})
    np.testing.assert_allclose(numpy_(loaded(X)), 2.0 * tfa_group_norm(X, 2, -1, GAMMA, BETA, 1e-3), atol=5e-5)

    class ScaledDense(keras.layers.Dense):
        pass

    wrapped = tfa_wn("wn", {**keras2_dense("dense", 4), "class_name": "ScaledDense"}, data_init=False)
    model = tfa.model_from_json(json.dumps(keras2_sequential([wrapped])), custom_objects={"ScaledDense": ScaledDense})
    assert type(model.get_layer("wn").layer) is ScaledDense

    mine = type("MyLoader", (), {})
    assert tfa.custom_objects({"Addons>GroupNormalization": mine})["Addons>GroupNormalization"] is mine


def test_a_bare_tf_keras_2_lstm_in_a_model_loses_time_major():
    lstm = keras2_lstm()
    model = tfa.model_from_json(json.dumps(keras2_sequential([lstm], input_shape=(5, 2))))
    assert type(model.get_layer("lstm")) is keras.layers.LSTM and tuple(model.output_shape) == (None, 3)


def _frn(**config):
    return tfa.custom_objects()["Addons>FilterResponseNormalization"].from_config(
        {"name": "frn", "axis": [1, 2], **config})


def test_filter_response_normalization_epsilon_values():
    """TF Addons' default epsilon (1e-6) when the config has none; a serialized scalar
    tensor (``[1e-3]``) is its value; a bool is no epsilon."""
    assert _frn().epsilon == 1e-6
    assert _frn(epsilon=[-1e-3]).epsilon == pytest.approx(1e-3)
    with pytest.raises(TypeError, match=r"Invalid `epsilon`.*expected a number\. Received: epsilon=True"):
        _frn(epsilon=True)
    with pytest.raises(TypeError, match=r"Invalid `epsilon`.*expected a number\. Received: epsilon=\[\]"):
        _frn(epsilon=[])  # a serialized scalar has one element: this raised a bare IndexError


def test_base_layer_keys_of_tf_keras_2_configs():
    """``autocast`` (a base-layer argument) and ``input_shape`` (Keras 3's legacy loader's name
    for ``batch_input_shape``, batch size included) are taken as the base layer's arguments."""
    config = dict(tfa_gn("gn", 2)["config"], autocast=False, input_shape=[None, 6, 7, 4])
    layer = tfa.custom_objects()["Addons>GroupNormalization"].from_config(config)
    assert type(layer) is normlab.GroupNormalization and layer.autocast is False
    assert tuple(layer._input_shape_arg) == (6, 7, 4)


def test_a_keras_layer_takes_its_weights_in_tf_keras_2_order_trainable_first():
    """TF-Keras 2 saved a layer's trainable weights, then the others; Keras 3's ``weights``
    keeps its sublayers' order. A Bidirectional RNN with its forward half frozen was saved
    backward first: taken in Keras 3's order the halves swapped (same shapes, no error)."""
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.Bidirectional(keras.layers.SimpleRNN(2), name="bi")])
    bi = model.get_layer("bi")
    bi.forward_layer.trainable = False
    rng = np.random.default_rng(2)
    halves = {side: [F32(rng.normal(size=v.shape)) for v in layer.weights]
              for side, layer in (("forward", bi.forward_layer), ("backward", bi.backward_layer))}
    names = ("kernel", "recurrent_kernel", "bias")
    saved = [(f"bi/{side}_simple_rnn/simple_rnn_cell/{n}:0", v) for side in ("backward", "forward")
             for n, v in zip(names, halves[side])]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bi.h5")
        write_keras2_h5(path, {"bi": saved})
        tfa.load_weights(model, path)
    for side, layer in (("forward", bi.forward_layer), ("backward", bi.backward_layer)):
        for variable, value in zip(layer.weights, halves[side]):
            np.testing.assert_array_equal(numpy_(variable), value)


def test_tlu_values_that_differ_at_one_position_only_are_refused():
    """Every position is compared, not only the first ones: a per-element tau equal everywhere
    but at the last position has no per-channel equivalent either."""
    layers = [{"class_name": "Addons>TLU", "config": {
        "name": "tlu", "trainable": True, "dtype": "float32", "affine": False,
        "tau_initializer": {"class_name": "Zeros", "config": {}}, "tau_regularizer": None, "tau_constraint": None}}]
    model = tfa.model_from_json(json.dumps(keras2_sequential(layers)))
    tau = np.zeros((6, 7, 4), "float32")
    tau[-1, -1, -1] = 0.5
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tlu.h5")
        write_keras2_h5(path, {"tlu": [("tlu/tau:0", tau)]})
        with pytest.raises(ValueError, match=r"per-element values of shape \(6, 7, 4\).*differ across positions"):
            tfa.load_weights(model, path)
        write_keras2_h5(path, {"tlu": [("tlu/tau:0", tau * 0 + 0.25)]})
        tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(model.get_layer("tlu").tau), np.full(4, 0.25, "float32"))

