"""TF Addons compatibility, without TF Addons: hand-written TF Addons configs, JSON and
legacy .h5 files (TF Addons' get_config keys and weight names), checked against TF
Addons' formulas transcribed to float64 NumPy."""

import copy
import importlib.util
import json
import os
import tempfile

import h5py
import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.compat import tfa

HAVE_FRN = importlib.util.find_spec("normlab.layers.filter_response_norm") is not None
needs_frn = pytest.mark.skipif(not HAVE_FRN, reason="normlab's FilterResponseNormalization is not available")

RNG = np.random.default_rng(0)
X = RNG.normal(2.0, 3.0, size=(4, 6, 7, 4)).astype("float32")  # NHWC, 4 channels

# --------------------------------------------------------------------------- TF Addons' formulas (float64)


def keras2_lstm():
    """A TF-Keras 2 LSTM's config (a new dict each time): it wrote time_major into every
    recurrent layer's, which Keras 3 rejects."""
    return {"class_name": "LSTM", "config": {
        "name": "lstm", "trainable": True, "dtype": "float32", "return_sequences": False,
        "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
        "time_major": False, "units": 3, "activation": "tanh", "recurrent_activation": "sigmoid",
        "use_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 2}}


def tfa_group_norm(x, groups, axis, gamma, beta, epsilon):
    """TF Addons' GroupNormalization.call, step by step (reshape, tf.nn.moments, batch_normalization)."""
    x = np.asarray(x, np.float64)
    shape = list(x.shape)
    groups = shape[axis] if groups == -1 else groups
    instance = shape[axis] // groups == 1
    group_shape, broadcast = list(shape), [1] * len(shape)
    if not instance:
        group_shape[axis] = shape[axis] // groups
        group_shape.insert(axis, groups)
        broadcast[axis] = shape[axis] // groups
        broadcast.insert(axis, groups)
    else:
        broadcast[axis] = groups
    xg = x.reshape(group_shape)
    reduction = list(range(1, xg.ndim))
    reduction.pop((-2 if axis == -1 else axis - 1) if not instance else (-1 if axis == -1 else axis - 1))
    mean = xg.mean(axis=tuple(reduction), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=tuple(reduction), keepdims=True)
    inv = 1.0 / np.sqrt(var + epsilon) * np.reshape(gamma, broadcast)
    return (xg * inv + (np.reshape(beta, broadcast) - mean * inv)).reshape(shape)


def tfa_filter_response_norm(x, gamma, beta, epsilon, learned_epsilon=0.0):
    """TF Addons' FilterResponseNormalization.call (NHWC, axis=[1, 2]; gamma/beta (1, 1, 1, C))."""
    x = np.asarray(x, np.float64)
    nu2 = (x ** 2).mean(axis=(1, 2), keepdims=True)
    return np.reshape(gamma, (1, 1, 1, -1)) * (x / np.sqrt(nu2 + abs(epsilon) + abs(learned_epsilon))) \
        + np.reshape(beta, (1, 1, 1, -1))


def l2_normalize(v, axis=None):
    """tf.math.l2_normalize."""
    return v / np.sqrt(np.maximum((v ** 2).sum(axis=axis, keepdims=True), 1e-12))


def tfa_weight_norm_dense(x, g, v, b):
    """TF Addons' WeightNormalization.call on Dense: kernel = l2_normalize(v, axis=[0]) * g."""
    return np.asarray(x, np.float64) @ (l2_normalize(np.asarray(v, np.float64), axis=0) * g) + b


def tfa_spectral_normalize(kernel, u):
    """TF Addons' SpectralNormalization.normalize_weights (one power iteration): (W / sigma, u)."""
    w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
    v = l2_normalize(np.asarray(u, np.float64) @ w.T)
    u = l2_normalize(v @ w)
    sigma = (v @ w @ u.T)[0, 0]
    return np.asarray(kernel, np.float64) / sigma, u


# --------------------------------------------------------------------------- TF Addons' configs, by hand

INITIALIZERS = {"beta_initializer": {"class_name": "Zeros", "config": {}},
                "gamma_initializer": {"class_name": "Ones", "config": {}},
                "beta_regularizer": None, "gamma_regularizer": None,
                "beta_constraint": None, "gamma_constraint": None}


def tfa_gn(name, groups, axis=-1, epsilon=1e-3, class_name="Addons>GroupNormalization"):
    """TF Addons' GroupNormalization.get_config (InstanceNormalization writes the same keys)."""
    return {"class_name": class_name, "config": {
        "name": name, "trainable": True, "dtype": "float32", "groups": groups, "axis": axis,
        "epsilon": epsilon, "center": True, "scale": True, **INITIALIZERS}}


def tfa_frn(name, epsilon=1e-6, learned_epsilon=True):
    return {"class_name": "Addons>FilterResponseNormalization", "config": {
        "name": name, "trainable": True, "dtype": "float32", "axis": [1, 2], "epsilon": epsilon,
        "learned_epsilon": learned_epsilon, **INITIALIZERS, "learned_epsilon_constraint": None}}


def keras2_dense(name, units, new_format=False):
    """A TF-Keras 2 Dense config: TF <= 2.12 (no "module") or TF >= 2.13 format."""
    config = {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": "float32", "units": units, "activation": "linear",
        "use_bias": True, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None}}
    if new_format:
        config = {"module": "keras.layers", **config, "registered_name": None,
                  "build_config": {"input_shape": [None, 6, 7, 4]}}
    return config


def keras2_conv2d(name, filters, kernel_size):
    return {"class_name": "Conv2D", "config": {
        "name": name, "trainable": True, "dtype": "float32", "filters": filters,
        "kernel_size": [kernel_size, kernel_size], "strides": [1, 1], "padding": "same",
        "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1, "activation": "linear",
        "use_bias": True, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None}}


def tfa_wn(name, layer, data_init=True):
    return {"class_name": "Addons>WeightNormalization", "config": {
        "name": name, "trainable": True, "dtype": "float32", "layer": layer, "data_init": data_init}}


def tfa_sn(name, layer, power_iterations=1):
    return {"class_name": "Addons>SpectralNormalization", "config": {
        "name": name, "trainable": True, "dtype": "float32", "layer": layer,
        "power_iterations": power_iterations}}


def keras2_sequential(layers, input_shape=(6, 7, 4)):
    inp = {"class_name": "InputLayer", "config": {
        "batch_input_shape": [None, *input_shape], "dtype": "float32", "sparse": False,
        "ragged": False, "name": "input_1"}}
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": [inp, *layers]},
            "keras_version": "2.12.0", "backend": "tensorflow"}


def deserialize(config):
    return keras.saving.deserialize_keras_object(copy.deepcopy(config), custom_objects=tfa.custom_objects())


def write_keras2_h5(path, weights, model_config=None):
    """A TF-Keras 2 .h5 file: weights is {layer_name: [(weight_name, array), ...]} in file order."""
    with h5py.File(path, "w") as f:
        if model_config is not None:
            f.attrs["keras_version"] = b"2.12.0"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            group = f.create_group("model_weights")
        else:
            group = f
        group.attrs["layer_names"] = [name.encode("utf8") for name in weights]
        group.attrs["keras_version"] = b"2.12.0"
        group.attrs["backend"] = b"tensorflow"
        for layer_name, layer_weights in weights.items():
            g = group.create_group(layer_name)
            g.attrs["weight_names"] = [name.encode("utf8") for name, _ in layer_weights]
            for name, value in layer_weights:
                g.create_dataset(name, data=value)


def numpy_(x):
    return ops.convert_to_numpy(x)


# --------------------------------------------------------------------------- one layer at a time


def test_custom_objects_cover_the_five_tfa_norms_and_tlu():
    objects = tfa.custom_objects({"my_loss": len})
    assert set(objects) == {
        "Addons>GroupNormalization", "Addons>InstanceNormalization", "Addons>FilterResponseNormalization",
        "Addons>WeightNormalization", "Addons>SpectralNormalization", "Addons>TLU", "my_loss",
    }


@pytest.mark.parametrize("groups, axis", [(2, -1), (4, -1), (1, -1), (2, 1)])
def test_group_normalization_gives_tfa_outputs(groups, axis):
    x = X if axis == -1 else np.transpose(X, (0, 3, 1, 2))
    layer = deserialize(tfa_gn("gn", groups, axis, epsilon=1e-2))
    assert type(layer) is normlab.GroupNormalization
    assert (layer.groups, layer.axis, layer.epsilon, layer.name) == (groups, axis, 1e-2, "gn")
    layer(x)
    gamma, beta = RNG.normal(size=4).astype("float32"), RNG.normal(size=4).astype("float32")
    layer.set_weights([gamma, beta])
    np.testing.assert_allclose(numpy_(layer(x)), tfa_group_norm(x, groups, axis, gamma, beta, 1e-2), atol=2e-5)


@pytest.mark.parametrize("groups", [-1, 4])  # TF Addons wrote -1, or the channel count once built
def test_instance_normalization_gives_tfa_outputs(groups):
    config = tfa_gn("in", groups, class_name="Addons>InstanceNormalization")
    # TF >= 2.13 wrote the dtype policy as an object
    config["config"]["dtype"] = {"module": "keras", "class_name": "Policy", "config": {"name": "float32"},
                                 "registered_name": None}
    layer = deserialize(config)
    assert type(layer) is normlab.InstanceNormalization and layer.dtype_policy.name == "float32"
    layer(X)
    gamma, beta = RNG.normal(size=4).astype("float32"), RNG.normal(size=4).astype("float32")
    layer.set_weights([gamma, beta])
    np.testing.assert_allclose(numpy_(layer(X)), tfa_group_norm(X, -1, -1, gamma, beta, 1e-3), atol=2e-5)


@needs_frn
def test_filter_response_normalization_gives_tfa_outputs():
    layer = deserialize(tfa_frn("frn", epsilon=-1e-3))  # TF Addons used abs(epsilon)
    assert type(layer) is normlab.layers.FilterResponseNormalization
    assert layer.epsilon == 1e-3 and layer.learned_epsilon and not layer.use_tlu
    layer(X)
    gamma, beta = RNG.normal(size=4), RNG.normal(size=4)
    by_name = {"gamma": gamma, "beta": beta, "learned_epsilon": np.array([-0.02])}
    for variable in layer.weights:
        variable.assign(by_name[variable.name].astype("float32"))
    expected = tfa_filter_response_norm(X, gamma, beta, -1e-3, learned_epsilon=-0.02)
    np.testing.assert_allclose(numpy_(layer(X)), expected, atol=2e-5)


@pytest.mark.parametrize("new_format", [False, True], ids=["tf2.12-config", "tf2.13-config"])
def test_weight_normalization_gives_tfa_outputs(new_format):
    layer = deserialize(tfa_wn("wn", keras2_dense("dense", 4, new_format)))
    assert type(layer) is normlab.WeightNormalization and layer.data_init
    assert type(layer.layer) is keras.layers.Dense and layer.layer.units == 4
    layer(X)
    g, v, b = RNG.uniform(0.5, 2, size=4), RNG.normal(size=(4, 4)), RNG.normal(size=4)
    layer.set_weights([g.astype("float32"), np.array(True), v.astype("float32"), b.astype("float32")])
    np.testing.assert_allclose(numpy_(layer(X, training=True)), tfa_weight_norm_dense(X, g, v, b), atol=2e-5)


def test_spectral_normalization_gives_tfa_outputs_in_inference_and_training():
    layer = deserialize(tfa_sn("sn", keras2_conv2d("conv2d", 4, 3)))
    assert type(layer) is normlab.SpectralNormalization and layer.in_place
    layer(X)
    kernel = RNG.normal(size=(3, 3, 4, 4)).astype("float32")
    bias, u = RNG.normal(size=4).astype("float32"), RNG.normal(size=(1, 4)).astype("float32")
    layer.set_weights([kernel, u, bias])  # Keras' order
    plain = keras.layers.Conv2D(4, 3, padding="same")
    plain(X)
    plain.set_weights([kernel, bias])
    # inference: TF Addons runs the layer with the kernel as stored
    np.testing.assert_allclose(numpy_(layer(X)), numpy_(plain(X)), atol=1e-5)
    # training: the kernel is overwritten with W / sigma, u is updated
    w, u = tfa_spectral_normalize(kernel, u)
    plain.set_weights([w.astype("float32"), bias])
    np.testing.assert_allclose(numpy_(layer(X, training=True)), numpy_(plain(X)), atol=1e-5)
    np.testing.assert_allclose(numpy_(layer.layer.kernel), w, atol=1e-6)
    np.testing.assert_allclose(numpy_(layer.vector_u), u, atol=1e-6)


def test_unknown_tfa_argument_is_reported():
    config = tfa_gn("gn", 2)
    config["config"]["momentum"] = 0.9
    with pytest.raises(ValueError, match=r"Invalid `config`: expected the arguments of TF Addons' "
                                         r"Addons>GroupNormalization.*Received: unknown keys \['momentum'\] "
                                         r"in the config of layer 'gn'\. .*remove those keys"):
        deserialize(config)


# --------------------------------------------------------------------------- whole models and files

GAMMA, BETA = RNG.normal(size=4), RNG.normal(size=4)
IN_GAMMA, IN_BETA = RNG.normal(size=4), RNG.normal(size=4)
FRN_GAMMA, FRN_BETA, FRN_EPS = RNG.normal(size=4), RNG.normal(size=4), 0.05
WN_G, WN_V, WN_B = RNG.uniform(0.5, 2, size=4), RNG.normal(size=(4, 4)), RNG.normal(size=4)
SN_KERNEL, SN_BIAS, SN_U = RNG.normal(size=(4, 4)) * 0.3, RNG.normal(size=4), RNG.normal(size=(1, 4))


def model_layers(with_frn=HAVE_FRN, data_init=True):
    layers = [tfa_gn("gn", 2), tfa_gn("in", 4, class_name="Addons>InstanceNormalization")]
    if with_frn:
        layers.append(tfa_frn("frn"))
    layers += [tfa_wn("wn", keras2_dense("dense", 4), data_init=data_init),
               tfa_sn("sn", keras2_dense("dense_1", 4, new_format=True))]
    return layers


def model_weights(with_frn=HAVE_FRN, data_init=True):
    """TF Addons' weights in TF-Keras 2's file order and names (trainable, then non-trainable)."""
    f32 = lambda a: np.asarray(a, "float32")  # noqa: E731
    weights = {
        "gn": [("gn/gamma:0", f32(GAMMA)), ("gn/beta:0", f32(BETA))],
        "in": [("in/gamma:0", f32(IN_GAMMA)), ("in/beta:0", f32(IN_BETA))],
    }
    if with_frn:  # learned_epsilon was created in __init__, so it comes first
        weights["frn"] = [("learned_epsilon:0", f32([FRN_EPS])),
                          ("frn/gamma:0", f32(FRN_GAMMA).reshape(1, 1, 1, 4)),
                          ("frn/beta:0", f32(FRN_BETA).reshape(1, 1, 1, 4))]
    weights["wn"] = [("wn/g:0", f32(WN_G)), ("wn/kernel:0", f32(WN_V)), ("wn/bias:0", f32(WN_B)),
                     ("wn/initialized:0", np.array(True))]
    if data_init:  # the internal copy of the wrapped layer TF Addons tracked too
        weights["wn"] += [("wn/data_dep_init/kernel:0", f32(WN_V)), ("wn/data_dep_init/bias:0", f32(WN_B * 0))]
    weights["sn"] = [("sn/kernel:0", f32(SN_KERNEL)), ("sn/bias:0", f32(SN_BIAS)), ("sn/sn_u:0", f32(SN_U))]
    return weights


def tfa_model_output(x, with_frn=HAVE_FRN):
    y = tfa_group_norm(x, 2, -1, GAMMA, BETA, 1e-3)
    y = tfa_group_norm(y, -1, -1, IN_GAMMA, IN_BETA, 1e-3)
    if with_frn:
        y = tfa_filter_response_norm(y, FRN_GAMMA, FRN_BETA, 1e-6, FRN_EPS)
    y = tfa_weight_norm_dense(y, WN_G, WN_V, WN_B)
    return y @ np.asarray(SN_KERNEL, np.float64) + SN_BIAS  # SN inference: the stored kernel


def test_model_from_json_of_a_tf_keras_2_model():
    model = tfa.model_from_json(json.dumps(keras2_sequential(model_layers())))
    expected = ["GroupNormalization", "InstanceNormalization"] + (["FilterResponseNormalization"] if HAVE_FRN else [])
    assert [type(layer).__name__ for layer in model.layers] == expected + ["WeightNormalization",
                                                                          "SpectralNormalization"]
    assert tuple(model.input_shape) == (None, 6, 7, 4) and tuple(model.output_shape) == (None, 6, 7, 4)


def test_functional_tf_keras_2_json():
    gn = tfa_gn("gn", 2)
    config = {"class_name": "Functional", "config": {
        "name": "model", "layers": [
            {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [], "config": {
                "batch_input_shape": [None, 6, 7, 4], "dtype": "float32", "sparse": False, "ragged": False,
                "name": "input_1"}},
            {**gn, "name": "gn", "inbound_nodes": [[["input_1", 0, 0, {}]]]}],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["gn", 0, 0]]},
        "keras_version": "2.12.0", "backend": "tensorflow"}
    model = tfa.model_from_json(json.dumps(config))
    model.layers[1].set_weights([GAMMA.astype("float32"), BETA.astype("float32")])
    np.testing.assert_allclose(numpy_(model(X)), tfa_group_norm(X, 2, -1, GAMMA, BETA, 1e-3), atol=2e-5)


def test_load_model_of_a_tf_keras_2_h5_file_and_migrate_to_keras_format():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tfa_model.h5")
        write_keras2_h5(path, model_weights(), keras2_sequential(model_layers()))
        model = tfa.load_model(path)
        y = numpy_(model(X))
        np.testing.assert_allclose(y, tfa_model_output(X), atol=1e-4)
        assert bool(numpy_(model.get_layer("wn").initialized))  # no second data-dependent init
        # saved again, it is a normlab model: no custom objects needed any more
        keras_path = os.path.join(tmp, "migrated.keras")
        model.save(keras_path)
        reloaded = keras.saving.load_model(keras_path)
    np.testing.assert_allclose(numpy_(reloaded(X)), y, atol=1e-6)
    assert type(reloaded.get_layer("gn")) is normlab.GroupNormalization


def test_keras_load_model_with_custom_objects_when_weights_line_up():
    # Keras' own .h5 loader matches weights by order: it works for the layers whose
    # weights TF Addons stored in normlab's order (not FRN, nor WN with data_init=True).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tfa_model.h5")
        layers, weights = model_layers(with_frn=False, data_init=False), model_weights(False, False)
        write_keras2_h5(path, weights, keras2_sequential(layers))
        model = keras.saving.load_model(path, custom_objects=tfa.custom_objects(), compile=False)
    np.testing.assert_allclose(numpy_(model(X)), tfa_model_output(X, with_frn=False), atol=1e-4)


def test_load_weights_of_a_weights_only_file_by_name():
    model = tfa.model_from_json(json.dumps(keras2_sequential(model_layers())))
    weights = model_weights()
    weights = dict(reversed(list(weights.items())))  # file order differs: matched by name
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.h5")
        write_keras2_h5(path, weights)
        tfa.load_weights(model, path)
    np.testing.assert_allclose(numpy_(model(X)), tfa_model_output(X), atol=1e-4)


def test_keras_3_json_naming_tfa_layers_loads_with_model_from_json():
    model = keras.Sequential([keras.Input((6, 7, 4)), normlab.GroupNormalization(2, name="gn")])
    config = json.loads(model.to_json())
    entry = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "gn")
    entry.update(module="tensorflow_addons.layers.normalizations", class_name="GroupNormalization",
                 registered_name="Addons>GroupNormalization")
    loaded = keras.models.model_from_json(json.dumps(config), custom_objects=tfa.custom_objects())
    assert type(loaded.get_layer("gn")) is normlab.GroupNormalization


def test_file_errors():
    model = tfa.model_from_json(json.dumps(keras2_sequential(model_layers())))
    with tempfile.TemporaryDirectory() as tmp:
        weights_only = os.path.join(tmp, "weights.h5")
        write_keras2_h5(weights_only, {"gn": model_weights()["gn"]})
        with pytest.raises(ValueError, match=r"Invalid `filepath`: expected a full-model \.h5 file.*"
                                             r"For a weights-only file, build the model and call load_weights"):
            tfa.load_model(weights_only)
        renamed = os.path.join(tmp, "renamed.h5")
        write_keras2_h5(renamed, {"other": model_weights()["gn"]})
        with pytest.raises(ValueError, match=r"Invalid `filepath`: expected weights for the model's \d+ layers "
                                             r"that have weights.*Received: 1 layers with weights"):
            tfa.load_weights(model, renamed)
        # A Keras 3 weights file has no layer_names: nothing matched, nothing was assigned, no error.
        keras3 = os.path.join(tmp, "model.weights.h5")
        model.save_weights(keras3)
        with pytest.raises(ValueError, match=r"Invalid `filepath`.*Received: no layer weights \(no `layer_names` "
                                             r"attribute\).*loads with model\.load_weights\(path\)"):
            tfa.load_weights(model, keras3)


def test_weight_normalization_around_a_tf_keras_2_lstm():
    # TF-Keras 2 wrote time_major into every recurrent layer's config; Keras 3 rejects it.
    lstm = keras2_lstm()
    layer = deserialize(tfa_wn("wn", lstm))
    assert type(layer) is normlab.WeightNormalization and layer.is_rnn
    assert type(layer.layer) is keras.layers.LSTM and layer.layer.units == 3
    model = tfa.model_from_json(json.dumps(keras2_sequential([tfa_wn("wn", lstm)], input_shape=(5, 2))))
    assert tuple(model.output_shape) == (None, 3)
    # TF-Keras 2.13+ also write each layer's module: the wrapped config went to Keras as it was
    newer = tfa_wn("wn", {**lstm, "module": "keras.layers", "registered_name": None})
    assert type(deserialize(newer).layer) is keras.layers.LSTM


def tfa_tlu(name, affine=False):
    """TF Addons' TLU.get_config (alpha_* only when affine)."""
    config = {"name": name, "trainable": True, "dtype": "float32", "affine": affine,
              "tau_initializer": {"class_name": "Zeros", "config": {}}, "tau_regularizer": None,
              "tau_constraint": None}
    if affine:
        config.update(alpha_initializer={"class_name": "Zeros", "config": {}}, alpha_regularizer=None,
                      alpha_constraint=None)
    return {"class_name": "Addons>TLU", "config": config}


def test_filter_response_norm_with_tfa_tlu_loads_and_keeps_per_channel_values():
    layers = [tfa_frn("frn", learned_epsilon=False), tfa_tlu("tlu", affine=True)]
    model = tfa.model_from_json(json.dumps(keras2_sequential(layers)))
    tlu = model.get_layer("tlu")
    assert type(tlu) is normlab.layers.TLU and tlu.affine
    rng = np.random.default_rng(3)
    tau, alpha = rng.normal(size=4).astype("float32"), rng.uniform(0, 0.5, size=4).astype("float32")
    per_element = {"tau": np.broadcast_to(tau, (6, 7, 4)), "alpha": np.broadcast_to(alpha, (6, 7, 4))}
    frn = [("frn/gamma:0", np.ones((1, 1, 1, 4), "float32")), ("frn/beta:0", np.zeros((1, 1, 1, 4), "float32"))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frn_tlu.h5")
        write_keras2_h5(path, {"frn": frn, "tlu": [(f"tlu/{k}:0", v) for k, v in per_element.items()]})
        tfa.load_weights(model, path)
        np.testing.assert_array_equal(numpy_(tlu.tau), tau)
        y = numpy_(model(X))
        frn_y = numpy_(model.get_layer("frn")(X))
        np.testing.assert_allclose(y, np.maximum(frn_y, alpha * frn_y + tau), atol=1e-6)
        varied = dict(per_element, tau=rng.normal(size=(6, 7, 4)).astype("float32"))  # trained per element
        write_keras2_h5(path, {"frn": frn, "tlu": [(f"tlu/{k}:0", v) for k, v in varied.items()]})
        with pytest.raises(ValueError, match=r"per-element values of shape \(6, 7, 4\).*differ across positions"):
            tfa.load_weights(model, path)
    np.testing.assert_array_equal(numpy_(tlu.tau), tau)  # the failed load changed nothing


def test_load_weights_refuses_a_weight_of_another_shape_and_the_same_size():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="first"),
                              keras.layers.Dense(3, name="dense")])
    before = [numpy_(w) for w in model.weights]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.h5")
        kernel = np.arange(12, dtype="float32").reshape(3, 4)  # (3, 4) saved; the model holds (3, 3) then (3, 3)
        write_keras2_h5(path, {"first": [("first/kernel:0", np.zeros((4, 3), "float32")),
                                         ("first/bias:0", np.ones(3, "float32"))],
                               "dense": [("dense/kernel:0", kernel[:, :3].T.copy().reshape(3, 3)),
                                         ("dense/bias:0", np.zeros(4, "float32"))]})
        with pytest.raises(ValueError, match=r"expected a saved weight of shape \(3,\).*Received: shape \(4,\)"):
            tfa.load_weights(model, path)
        write_keras2_h5(path, {"first": [("first/kernel:0", np.zeros((2, 6), "float32")),
                                         ("first/bias:0", np.ones(3, "float32"))],
                               "dense": [("dense/kernel:0", np.zeros((3, 3), "float32")),
                                         ("dense/bias:0", np.zeros(3, "float32"))]})
        with pytest.raises(ValueError, match=r"expected a saved weight of shape \(4, 3\).*Received: shape \(2, 6\)"):
            tfa.load_weights(model, path)
    for w, b in zip(model.weights, before):  # nothing was assigned before the error
        np.testing.assert_array_equal(numpy_(w), b)


def test_custom_objects_and_the_frn_loader_name_bad_values():
    with pytest.raises(TypeError, match=r"Invalid `extra`: expected a dict of custom objects.*Received: extra='x'"):
        tfa.custom_objects(extra="x")
    with pytest.raises(TypeError, match=r"Invalid `epsilon` in a TF Addons FilterResponseNormalization config: "
                                        r"expected a number\. Received: epsilon=None"):
        tfa.custom_objects()["Addons>FilterResponseNormalization"].from_config({"epsilon": None})


# --------------------------------------------------------------------------- nested models


def _keras2_inner(layers, input_shape):
    inp = {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *input_shape], "dtype": "float32",
                                                   "sparse": False, "ragged": False, "name": "input_2"}}
    return {"class_name": "Sequential", "config": {"name": "inner", "layers": [inp, *layers]}}


def test_a_nested_model_takes_its_layers_weights_by_name():
    """TF-Keras 2 saved a nested model's weights in one group; they were matched by
    position, which skipped TF Addons' renames and orders: a WeightNormalization'd
    LSTM got its kernel and recurrent kernel swapped (outputs 0.5 off on outputs of
    0.5, silently), and a data-initialized one failed on its extra weights."""
    rng = np.random.default_rng(1)
    lstm = keras2_lstm()
    k, r = rng.normal(size=(3, 12)).astype("float32"), rng.normal(size=(3, 12)).astype("float32")
    saved = [("wn/g:0", rng.uniform(0.5, 2, size=12).astype("float32")),
             ("wn/lstm/lstm_cell/recurrent_kernel:0", r), ("wn/lstm/lstm_cell/kernel:0", k),
             ("wn/lstm/lstm_cell/bias:0", rng.normal(size=12).astype("float32")), ("wn/initialized:0", np.array(True))]
    flat = keras2_sequential([tfa_wn("wn", lstm, data_init=False)], input_shape=(5, 3))
    nested = keras2_sequential([_keras2_inner([tfa_wn("wn", lstm, data_init=False)], (5, 3))], input_shape=(5, 3))
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        write_keras2_h5(os.path.join(tmp, "flat.h5"), {"wn": saved}, flat)
        write_keras2_h5(os.path.join(tmp, "nested.h5"), {"inner": saved}, nested)
        a, b = tfa.load_model(os.path.join(tmp, "flat.h5")), tfa.load_model(os.path.join(tmp, "nested.h5"))
    cell = b.get_layer("inner").get_layer("wn").layer.cell
    np.testing.assert_array_equal(numpy_(cell.kernel), k)
    np.testing.assert_array_equal(numpy_(cell.recurrent_kernel), r)
    np.testing.assert_array_equal(numpy_(b(x)), numpy_(a(x)))
    prefixed = [(f"inner/{name}", value) for name, value in saved]  # names that do not name its layers
    with tempfile.TemporaryDirectory() as tmp:
        write_keras2_h5(os.path.join(tmp, "prefixed.h5"), {"inner": prefixed}, nested)
        with pytest.raises(ValueError, match=r"Invalid `filepath`: expected the weights of nested model 'inner' "
                                             r"named after its layers \['wn'\].*Received: weights named \['inner'\]"):
            tfa.load_model(os.path.join(tmp, "prefixed.h5"))

    inner = _keras2_inner([tfa_gn("gn", 2), tfa_wn("wn", keras2_dense("dense", 4), data_init=True)], (6, 7, 4))
    f32 = lambda a: np.asarray(a, "float32")  # noqa: E731
    saved = [("gn/gamma:0", f32(GAMMA)), ("gn/beta:0", f32(BETA)), ("wn/g:0", f32(WN_G)), ("wn/kernel:0", f32(WN_V)),
             ("wn/bias:0", f32(WN_B)), ("wn/initialized:0", np.array(True)),
             ("wn/data_dep_init/kernel:0", f32(WN_V)), ("wn/data_dep_init/bias:0", f32(WN_B * 0))]
    with tempfile.TemporaryDirectory() as tmp:
        write_keras2_h5(os.path.join(tmp, "gn_wn.h5"), {"inner": saved}, keras2_sequential([inner]))
        model = tfa.load_model(os.path.join(tmp, "gn_wn.h5"))
    np.testing.assert_allclose(numpy_(model.get_layer("inner").get_layer("gn").gamma), GAMMA, rtol=1e-6)
    wn = model.get_layer("inner").get_layer("wn")
    np.testing.assert_allclose(numpy_(wn.g), WN_G, rtol=1e-6)
    np.testing.assert_allclose(numpy_(wn.layer.bias), WN_B, rtol=1e-6)
