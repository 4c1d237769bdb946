"""TF Addons files and configs (normlab.compat.tfa, tfa_config): chunked .h5 attributes, files holding only some of the model's layers or listing layers
without weights, nested models mixing TF Addons and Keras layers, the user's own custom
objects, bare recurrent layers of TF-Keras 2, and TF Addons config values (FRN's epsilon
default, a serialized epsilon, ``autocast``, ``input_shape``, a mixed precision policy);
models nested two levels deep, files whose layers are named otherwise, weights missing or
in excess, an open ``h5py.File``, and configs left as they were given."""

import copy
import json
import os
import tempfile
import warnings

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
    tfa_frn,
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
    with pytest.raises(TypeError, match=r"Invalid `epsilon`.*expected a number\. Received: epsilon=\[0\.001, 0\.002\]"):
        _frn(epsilon=[1e-3, 2e-3])  # nor is its first element taken from several


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



def _sequential(name, layers, input_shape):
    inp = {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *input_shape], "dtype": "float32",
                                                   "sparse": False, "ragged": False, "name": f"input_{name}"}}
    return {"class_name": "Sequential", "config": {"name": name, "layers": [inp, *layers]}}


def test_a_model_nested_two_levels_deep_with_a_layer_without_weights_takes_weights_by_name():
    """TF-Keras 2 saved the weights of ``outer`` (holding ``inner``, holding a WeightNormalization'd
    LSTM beside an Activation) in one group, named after the layer that made them: the inner model
    is opened too, and the Activation has no weights to claim. Taken in order, the LSTM's kernel
    and recurrent kernel (same shape) would swap."""
    rng = np.random.default_rng(4)
    k, r = F32(rng.normal(size=(3, 12))), F32(rng.normal(size=(3, 12)))
    saved = [("wn/g:0", F32(rng.uniform(0.5, 2, size=12))), ("wn/lstm/lstm_cell/recurrent_kernel:0", r),
             ("wn/lstm/lstm_cell/kernel:0", k), ("wn/lstm/lstm_cell/bias:0", F32(rng.normal(size=12))),
             ("wn/initialized:0", np.array(True))]
    relu = {"class_name": "Activation", "config": {"name": "relu", "trainable": True, "dtype": "float32",
                                                   "activation": "relu"}}
    inner = _sequential("inner", [tfa_wn("wn", keras2_lstm(), data_init=False), relu], (5, 3))
    config = keras2_sequential([_sequential("outer", [inner], (5, 3))], input_shape=(5, 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nested.h5")
        write_keras2_h5(path, {"outer": saved}, config)
        model = tfa.load_model(path)
    cell = model.get_layer("outer").get_layer("inner").get_layer("wn").layer.cell
    np.testing.assert_array_equal(numpy_(cell.kernel), k)
    np.testing.assert_array_equal(numpy_(cell.recurrent_kernel), r)


def test_a_nested_models_filter_response_norm_takes_its_unscoped_learned_epsilon():
    """TF Addons' FRN made ``learned_epsilon`` in ``__init__``, outside its name scope: inside a
    nested model's one group it is saved as ``learned_epsilon:0``, before the ``frn/...``
    weights of its layer, which takes it (here between two layers whose names say whose)."""
    saved = [("gn/gamma:0", F32(GAMMA)), ("gn/beta:0", F32(BETA)), ("learned_epsilon:0", F32([0.05])),
             ("frn/gamma:0", F32([1, 2, 3, 4]).reshape(1, 1, 1, 4)), ("frn/beta:0", F32(np.zeros((1, 1, 1, 4)))),
             ("frn_1/gamma:0", F32([4, 3, 2, 1]).reshape(1, 1, 1, 4)), ("frn_1/beta:0", F32(np.ones((1, 1, 1, 4))))]
    layers = [tfa_gn("gn", 2), tfa_frn("frn"), tfa_frn("frn_1", learned_epsilon=False)]
    config = keras2_sequential([_sequential("inner", layers, (6, 7, 4))])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nested.h5")
        write_keras2_h5(path, {"inner": saved}, config)
        model = tfa.load_model(path)
        again = tfa.model_from_json(json.dumps(config))
        tfa.load_weights(again, path)
    for loaded in (model, again):
        inner = loaded.get_layer("inner")
        np.testing.assert_array_equal(numpy_(inner.get_layer("frn").eps_learned), F32([0.05]))
        np.testing.assert_array_equal(numpy_(inner.get_layer("frn").gamma), F32([1, 2, 3, 4]))
        np.testing.assert_array_equal(numpy_(inner.get_layer("frn_1").gamma), F32([4, 3, 2, 1]))
        np.testing.assert_array_equal(numpy_(inner.get_layer("frn_1").beta), F32(np.ones(4)))
        np.testing.assert_array_equal(numpy_(inner.get_layer("gn").gamma), F32(GAMMA))


def test_a_weight_a_tfa_layer_needs_and_the_file_lacks_is_an_error():
    model = _gn_in_model()
    before = numpy_(model.get_layer("gn").beta)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", F32(GAMMA))],
                               "in": [("in/gamma:0", F32(IN_GAMMA)), ("in/beta:0", F32(IN_BETA))]})
        with pytest.raises(ValueError, match=r"expected a saved weight named 'beta' for layer 'gn'.*"
                                             r"Received: weights \['gn/gamma:0'\]"):
            tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(model.get_layer("gn").beta), before)


def test_a_tfa_layers_weight_is_folded_per_channel_only_for_tlu():
    """Per-element values that agree across positions give a TLU's per-channel weight; a
    GroupNormalization's gamma saved with another shape is refused, equal rows or not."""
    model = _gn_in_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", np.tile(F32(GAMMA), (2, 1))), ("gn/beta:0", F32(BETA))]})
        with pytest.raises(ValueError, match=r"expected a saved weight of shape \(4,\).*Received: shape \(2, 4\)"):
            tfa.load_weights(model, path)


@pytest.mark.parametrize("count", [1, 3])
def test_a_keras_layer_with_fewer_or_more_saved_weights_is_an_error(count):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    saved = [("dense/kernel:0", np.ones((4, 3), "float32")), ("dense/bias:0", np.ones(3, "float32")),
             ("dense/extra:0", np.ones(3, "float32"))][:count]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {"dense": saved})
        with pytest.raises(ValueError, match=rf"expected 2 saved weights for layer 'dense'.*Received: {count} weights"):
            tfa.load_weights(model, path)


def test_layers_named_otherwise_in_the_file_load_in_order():
    """No layer of the file has a namesake in the model (TF-Keras 2's automatic names): the
    layers with weights are paired in order, those without weights left out on both sides."""
    relu = {"class_name": "Activation", "config": {"name": "relu", "trainable": True, "dtype": "float32",
                                                   "activation": "relu"}}
    model = tfa.model_from_json(json.dumps(keras2_sequential(
        [tfa_gn("gn", 2), relu, tfa_gn("in", 4, class_name="Addons>InstanceNormalization")])))
    names = ("group_normalization", "instance_normalization")
    values = ((GAMMA, BETA), (IN_GAMMA, IN_BETA))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {name: [(f"{name}/gamma:0", F32(gamma)), (f"{name}/beta:0", F32(beta))]
                               for name, (gamma, beta) in zip(names, values)})
        tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(model.get_layer("gn").gamma), F32(GAMMA))
    np.testing.assert_array_equal(numpy_(model.get_layer("in").beta), F32(IN_BETA))


def test_an_open_h5py_file_is_left_open():
    model = _gn_in_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        write_keras2_h5(path, {"gn": [("gn/gamma:0", F32(GAMMA)), ("gn/beta:0", F32(BETA))]})
        with h5py.File(path, "r") as f:
            tfa.load_weights(model, f)
            assert f.id.valid and "gn" in f  # the caller's file: theirs to close
    np.testing.assert_array_equal(numpy_(model.get_layer("gn").gamma), F32(GAMMA))


def test_a_tf_keras_2_mixed_precision_policy_is_kept():
    config = tfa_gn("gn", 2)
    config["config"]["dtype"] = {"module": "keras.mixed_precision", "class_name": "Policy",
                                 "config": {"name": "mixed_float16"}, "registered_name": None}
    layer = tfa.custom_objects()["Addons>GroupNormalization"].from_config(config["config"])
    assert layer.dtype_policy.name == "mixed_float16"


def test_instance_normalization_groups_is_dropped_without_a_warning():
    """TF Addons wrote the channel count once built; normlab's InstanceNormalization warns
    when given one, but a loaded config is not the user's code."""
    config = tfa_gn("in", 4, class_name="Addons>InstanceNormalization")["config"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = tfa.custom_objects()["Addons>InstanceNormalization"].from_config(config)
    assert type(layer) is normlab.InstanceNormalization


def _keras2_rnn(class_name, name, **extra):
    return {"class_name": class_name, "config": {
        "name": name, "trainable": True, "dtype": "float32", "return_sequences": False, "return_state": False,
        "go_backwards": False, "stateful": False, "unroll": False, "time_major": False, "units": 3,
        "activation": "tanh", "use_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0, **extra}}


@pytest.mark.parametrize("rnn, cls", [
    (_keras2_rnn("GRU", "gru", recurrent_activation="sigmoid", implementation=2, reset_after=True), keras.layers.GRU),
    (_keras2_rnn("SimpleRNN", "simple_rnn"), keras.layers.SimpleRNN),
])
def test_every_tf_keras_2_recurrent_layer_loses_time_major(rnn, cls):
    wrapped = {**rnn, "config": {**rnn["config"], "return_sequences": True}}
    bare = {**rnn, "config": {**rnn["config"], "name": "bare"}}
    model = tfa.model_from_json(json.dumps(keras2_sequential([tfa_wn("wn", wrapped, data_init=False), bare],
                                                             input_shape=(5, 2))))
    assert type(model.get_layer("wn").layer) is cls and type(model.get_layer("bare")) is cls
    assert tuple(model.output_shape) == (None, 3)


def test_the_configs_given_are_left_as_they_were():
    """The loaders and model_from_config take copies: the caller's configs (a wrapped
    TF-Keras 2 LSTM's time_major included) are not edited."""
    for loader, config in (("Addons>WeightNormalization", tfa_wn("wn", keras2_lstm())["config"]),
                           ("Addons>FilterResponseNormalization", tfa_frn("frn")["config"])):
        given = copy.deepcopy(config)
        tfa.custom_objects()[loader].from_config(config)
        assert config == given, loader
    config = keras2_sequential([tfa_wn("wn", keras2_lstm())], input_shape=(5, 2))
    given = copy.deepcopy(config)
    tfa.model_from_config(config)
    assert config == given


def test_a_loader_takes_a_layer_already_made():
    dense = keras.layers.Dense(4)
    layer = tfa.custom_objects()["Addons>WeightNormalization"].from_config(
        {"name": "wn", "layer": dense, "data_init": False})
    assert type(layer) is normlab.WeightNormalization and layer.layer is dense


def test_the_users_objects_win_over_the_loaders_in_a_model_config():
    class MyGroupNorm(normlab.GroupNormalization):
        pass

    model = tfa.model_from_config(keras2_sequential([tfa_gn("gn", 2)]),
                                  custom_objects={"Addons>GroupNormalization": MyGroupNorm})
    assert type(model.get_layer("gn")) is MyGroupNorm
