"""WeightNormalization: float64 references, data-dependent init, RNNs, remove(), TF Addons anchors, saving, errors."""

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
from normlab.testing.autodiff import finite_differences, gradients

BACKEND = keras.backend.backend()
# One input shape throughout keeps JAX's per-shape compilations few. Output
# widths differ from the filter count: Keras' own channels-first Conv2D adds
# its bias on the wrong axis under TensorFlow when they are equal (keras.ops.add).
X = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 6, 7, 4)).astype("float32")  # NHWC
X_FIRST = np.transpose(X, (0, 3, 1, 2))
SEQ = np.random.default_rng(5).normal(size=(6, 5, 3)).astype("float32")  # (batch, time, features)
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rnn_reference(kind, x, kernel, recurrent, bias):
    """Float64 last output of Keras' SimpleRNN / LSTM / GRU (default options, GRU reset_after)."""
    x, kernel, recurrent, bias = (np.asarray(a, np.float64) for a in (x, kernel, recurrent, bias))
    h = np.zeros((x.shape[0], recurrent.shape[0]))
    c = np.zeros_like(h)
    for t in range(x.shape[1]):
        if kind == "SimpleRNN":
            h = np.tanh(x[:, t] @ kernel + bias + h @ recurrent)
        elif kind == "LSTM":  # gates i, f, c, o
            i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=-1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:  # GRU: gates z, r, h; bias rows are (input, recurrent)
            xz, xr, xh = np.split(x[:, t] @ kernel + bias[0], 3, axis=-1)
            hz, hr, hh = np.split(h @ recurrent + bias[1], 3, axis=-1)
            z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
            h = z * h + (1 - z) * np.tanh(xh + r * hh)
    return h


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


@pytest.mark.parametrize("first_call", ["training", "inference", "default", "predict"])
def test_tfa_data_init_anchor_on_the_first_call_of_any_kind(first_call):
    # TF Addons' test_with_data_init_is_true: identity kernel, output x / 4, whatever the first call
    if first_call == "predict" and BACKEND == "jax":
        pytest.skip("JAX predict cannot initialize: test_jax_predict_leaves_the_initialization_to_an_eager_call")
    x = np.array([[[-4.0, -4.0], [4.0, 4.0]]], "float32")
    dense = keras.layers.Dense(2, kernel_initializer="identity", bias_initializer="zeros")
    layer = normlab.WeightNormalization(dense, data_init=True)
    if first_call == "predict":  # traced on TensorFlow: the initialization is an ops.cond
        y = keras.Sequential([keras.Input((2, 2)), layer]).predict(x, verbose=0)
    else:
        y = layer(x, **{"training": {"training": True}, "inference": {"training": False}, "default": {}}[first_call])
    np.testing.assert_allclose(ops.convert_to_numpy(y), x / 4, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x * 3.0)), 3 * x / 4, atol=1e-6)  # once only
    assert bool(ops.convert_to_numpy(layer.initialized))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_data_init_in_a_tf_function(jit_compile):
    import tensorflow as tf

    x = np.array([[[-4.0, -4.0], [4.0, 4.0]]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    layer.build(x.shape)
    run = tf.function(lambda t: layer(t), jit_compile=jit_compile)
    np.testing.assert_allclose(run(x).numpy(), x / 4, atol=1e-6)
    np.testing.assert_allclose(run(x * 3.0).numpy(), 3 * x / 4, atol=1e-6)


def _trace_without_running(model, x):
    """A graph of ``model`` traced, never run: what an export does."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(model).get_concrete_function(tf.TensorSpec(x.shape)).graph
    import torch

    return torch.export.export(model, (torch.tensor(x),)).graph


@pytest.mark.skipif(BACKEND == "jax", reason="a graph traced and never run (tf.function, torch.export)")
def test_a_graph_traced_before_the_first_call_leaves_data_init_to_the_next():
    """Such a trace (``model.export`` of a new model) marked the layer
    initialized, and it never was: ``g`` stayed 1 (outputs 3.4 off)."""
    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    model = keras.Sequential([keras.Input((2,)), layer])
    _trace_without_running(model, x)
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), x / 4, atol=1e-6)
    assert bool(ops.convert_to_numpy(layer.initialized))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graph ops")
def test_a_graph_traced_after_fit_carries_no_initialization():
    """``fit`` initializes inside its own graph; a later trace (``model.export``)
    takes the layer as initialized: no branch, no assignment in it."""
    x = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    model = keras.Sequential([keras.Input((2,)), normlab.WeightNormalization(keras.layers.Dense(2))])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, x, epochs=1, batch_size=8, verbose=0)
    ops_in_graph = {op.type for op in _trace_without_running(model, x).get_operations()}
    assert not ops_in_graph & {"If", "StatelessIf", "AssignVariableOp"}, sorted(ops_in_graph)


def test_an_empty_first_batch_leaves_data_init_to_the_next():
    """Its statistics are 0/0: ``g`` was NaN for good. The layer waits for a batch with samples."""
    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    assert tuple(layer(x[:0]).shape) == (0, 2)
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), [1.0, 1.0])
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), x / 4, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: keras.layers.Conv2D(4, 3), lambda: keras.layers.SimpleRNN(4)],
                         ids=["conv", "rnn"])
def test_a_constant_first_batch_leaves_data_init_to_the_next(make):
    """model(np.zeros(...)) to build a model: variance 0 gave g = 1e5 (TF
    Addons too), every later output 1e5 times too large."""
    layer, fresh = normlab.WeightNormalization(make()), normlab.WeightNormalization(make())
    x = X if isinstance(layer.layer, keras.layers.Conv2D) else X[:, 0]
    layer.build(x.shape)
    fresh.build(x.shape)
    fresh.set_weights(layer.get_weights())
    layer(np.zeros((2, *x.shape[1:]), "float32"))
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), np.ones(layer.g.shape))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(fresh(x)), rtol=1e-5, atol=1e-6)
    assert bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g), ops.convert_to_numpy(fresh.g), rtol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph deciding at run time")
def test_a_constant_batch_in_a_graph_leaves_data_init_to_the_next():
    import tensorflow as tf

    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    layer.build(x.shape)
    run = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, 2])])
    run(np.full((3, 2), 5.0, "float32"))
    assert not bool(layer.initialized.numpy())
    np.testing.assert_array_equal(layer.g.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(run(x).numpy(), x / 4, atol=1e-6)
    assert bool(layer.initialized.numpy())


def test_a_unit_without_spread_keeps_its_g_and_bias_while_the_others_initialize():
    x = np.random.default_rng(4).normal(size=(16, 3)).astype("float32")
    x[:, 2] = 7.0  # unit 2 sees only this constant feature
    dense = keras.layers.Dense(3, kernel_initializer="identity", bias_initializer="ones")
    layer = normlab.WeightNormalization(dense)
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g)[2], 1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(dense.bias)[2], 1.0)
    np.testing.assert_allclose(y[:, 2], 8.0, rtol=1e-6)  # 7 * g + bias, as before the call
    np.testing.assert_allclose(y[:, :2].std(0), 1.0, rtol=1e-4)


@pytest.mark.parametrize("make", [lambda: keras.layers.Dense(2), lambda: keras.layers.SimpleRNN(2)],
                         ids=["dense", "rnn"])
def test_one_value_per_unit_leaves_data_init_to_the_next(make):
    """One sample through a Dense layer gives each unit one value, variance 0:
    ``g`` was 1e5 (TF Addons too), every later output 1e5 times too large."""
    x = np.random.default_rng(3).normal(size=(6, 5, 2)).astype("float32")
    x = x if isinstance(make(), keras.layers.RNN) else x[:, 0]
    layer = normlab.WeightNormalization(make())
    layer(x[:1])
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), np.ones(layer.g.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RNN's advice against data_init
        layer(x)
    assert bool(ops.convert_to_numpy(layer.initialized))
    assert np.abs(ops.convert_to_numpy(layer.g)).max() < 100


def test_one_sample_with_a_spread_initializes():
    """A convolution's single image has many values per unit: it initializes."""
    layer = normlab.WeightNormalization(keras.layers.Conv2D(3, 3))
    y = ops.convert_to_numpy(layer(X[:1]))
    assert bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
def test_data_init_under_torch_compile_with_dynamic_sizes():
    """A dynamic batch size (a SymInt): the size check stays a guard on it, never a tensor."""
    import torch

    x = np.array([[-4.0, -4.0], [4.0, 4.0], [0.0, 0.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    layer.build(x.shape)
    y = torch.compile(lambda t: layer(t), fullgraph=True, dynamic=True)(torch.tensor(x))
    np.testing.assert_allclose(ops.convert_to_numpy(y), x / np.sqrt(32 / 3), atol=1e-5)
    assert bool(ops.convert_to_numpy(layer.initialized))


def test_training_on_one_sample_batches_marks_the_layer_initialized():
    """``fit(batch_size=1)`` trained g while the layer waited for a batch with a
    spread; the first larger batch (``predict``) then overwrote the trained g and bias."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    wrapped = normlab.WeightNormalization(keras.layers.Dense(2))
    model = keras.Sequential([keras.Input((3,)), wrapped])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX's and the one-sample batch's
        model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    assert bool(ops.convert_to_numpy(wrapped.initialized))
    trained = numpy_weights(wrapped)
    assert np.abs(ops.convert_to_numpy(wrapped.g)).max() < 100  # not from a zero variance (1e5)
    model.predict(x, batch_size=8, verbose=0)
    for a, b in zip(numpy_weights(wrapped), trained):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile, torch.export")
def test_torch_traces_of_a_one_sample_batch_and_of_a_dynamic_batch():
    """A compiled first call on one sample marked the layer as seen: later calls never
    initialized it. ``torch.export`` with a dynamic batch dimension failed."""
    import torch

    x = torch.tensor(np.random.default_rng(5).normal(2.0, 3.0, size=(8, 5)).astype("float32"))
    layer = normlab.WeightNormalization(keras.layers.Dense(3))
    layer.build((None, 5))
    torch.compile(lambda t: layer(t), fullgraph=True)(x[:1])
    assert not bool(ops.convert_to_numpy(layer.initialized))
    y = ops.convert_to_numpy(layer(x))
    assert bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)

    fresh = normlab.WeightNormalization(keras.layers.Dense(3))
    fresh.build((None, 5))
    module = torch.nn.Module()
    module.wn = fresh
    module.forward = lambda t: module.wn(t)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    assert not bool(ops.convert_to_numpy(fresh.initialized))  # traced, not run


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph's unknown batch size")
def test_one_sample_at_run_time_leaves_data_init_to_the_next():
    import tensorflow as tf

    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    layer.build(x.shape)
    run = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, 2])])
    run(x[:1])
    assert not bool(layer.initialized.numpy())
    np.testing.assert_allclose(run(x).numpy(), x / 4, atol=1e-6)
    np.testing.assert_allclose(run(x[:1] * 3.0).numpy(), 3 * x[:1] / 4, atol=1e-6)  # initialized once
    other = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    other.build(x.shape)
    tf.function(lambda t: other(t, training=True), input_signature=[tf.TensorSpec([None, 2])])(x[:1])
    assert bool(other.initialized.numpy())  # a training step: what it trains is kept


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph's unknown batch size")
def test_a_batch_empty_at_run_time_leaves_data_init_to_the_next():
    import tensorflow as tf

    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    layer.build(x.shape)
    run = tf.function(lambda t: layer(t, training=True), input_signature=[tf.TensorSpec([None, 2])])
    run(x[:0])
    assert not bool(layer.initialized.numpy())
    np.testing.assert_array_equal(layer.g.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(run(x).numpy(), x / 4, atol=1e-6)
    np.testing.assert_allclose(run(x * 3.0).numpy(), 3 * x / 4, atol=1e-6)  # initialized once


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_data_init_matches_the_paper(data_format):
    x = X
    conv = keras.layers.Conv2D(4, 3, data_format=data_format, bias_initializer="random_normal",
                               activation="relu")
    layer = normlab.WeightNormalization(conv)
    xin = x if data_format == "channels_last" else X_FIRST
    layer.build(xin.shape)
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), np.ones(4))
    v = ops.convert_to_numpy(conv.kernel)
    y = ops.convert_to_numpy(layer(xin))  # the first call, here in inference, initializes
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


@pytest.mark.parametrize("training", [False, True])
def test_a_stateless_call_leaves_the_initialization_to_the_next_eager_call(training):
    """On TensorFlow and torch it ran the initialization, whose g and bias ``stateless_call``
    drops, and took the layer as initialized: no later call initialized it (outputs 2-3x
    the unit spread)."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 8)).astype("float32")
    wn = normlab.WeightNormalization(keras.layers.Dense(5))
    wn.build(x.shape)
    with pytest.warns(UserWarning, match=r"a stateless call .* discards updates of trainable weights"):
        _, state = wn.stateless_call([v.value for v in wn.trainable_variables],
                                     [v.value for v in wn.non_trainable_variables], x, training=training)
    assert [bool(ops.convert_to_numpy(s)) for s in state] == [training]  # a training step: trained weights
    assert not bool(ops.convert_to_numpy(wn.initialized))  # the layer itself is untouched
    y = ops.convert_to_numpy(wn(x))
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.skipif(BACKEND != "jax", reason="only JAX drops the initialization inside fit")
def test_jax_fit_warns_and_marks_the_layer_initialized():
    wn = normlab.WeightNormalization(keras.layers.Dense(4))
    model = keras.Sequential([keras.Input(X.shape[1:]), wn])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(UserWarning, match=r"Call the model once eagerly first"):
        model.fit(X, np.zeros(X.shape), epochs=1, verbose=0)
    assert bool(ops.convert_to_numpy(wn.initialized))  # so no later call overwrites the trained g
    g = ops.convert_to_numpy(wn.g)
    model(X)
    np.testing.assert_array_equal(ops.convert_to_numpy(wn.g), g)
    eager = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(keras.layers.Dense(4))])
    eager(X)
    eager.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        eager.fit(X, np.zeros(X.shape), epochs=1, verbose=0)


@pytest.mark.skipif(BACKEND != "jax", reason="only JAX drops the initialization inside predict")
def test_jax_predict_leaves_the_initialization_to_an_eager_call():
    x = np.array([[[-4.0, -4.0], [4.0, 4.0]]], "float32")
    wn = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    model = keras.Sequential([keras.Input((2, 2)), wn])
    with pytest.warns(UserWarning, match=r"cannot happen here"):
        np.testing.assert_allclose(model.predict(x, verbose=0), x, atol=1e-6)  # g = 1: v / ||v||
    assert not bool(ops.convert_to_numpy(wn.initialized))
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), x / 4, atol=1e-6)


def test_config_serialization_and_keras_saving():
    x = X
    wn = normlab.WeightNormalization(keras.layers.Conv2D(4, 3, activation="relu"), data_init=True, name="wn")
    config = wn.get_config()
    assert set(config) == {"layer", "data_init", "name", "trainable", "dtype"}
    assert config["layer"]["class_name"] == "Conv2D" and config["data_init"] is True
    model = keras.Sequential([keras.Input(X.shape[1:]), wn])
    y = ops.convert_to_numpy(model(x))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wn))
    assert type(restored) is normlab.WeightNormalization and restored.data_init and not restored.is_rnn
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wn.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        weights_path = os.path.join(tmp, "wn.weights.h5")
        model.save_weights(weights_path)
        fresh = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(
            keras.layers.Conv2D(4, 3, activation="relu"))])
        fresh.load_weights(weights_path)
    for other in (loaded, fresh):  # loaded weights say initialized: no second initialization
        layer = other.layers[0]
        assert bool(ops.convert_to_numpy(layer.initialized))
        np.testing.assert_allclose(ops.convert_to_numpy(other(x * 3.0)), ops.convert_to_numpy(model(x * 3.0)),
                                   atol=1e-5)
        np.testing.assert_allclose(ops.convert_to_numpy(other(x, training=True)), y, atol=1e-5)


def test_a_model_saved_before_its_first_call_initializes_after_loading():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(keras.layers.Conv2D(4, 3))])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wn.keras")
        model.save(path)  # initialized=False, g = 1
        loaded = keras.saving.load_model(path)
        weights_path = os.path.join(tmp, "wn.weights.h5")
        model.save_weights(weights_path)
        twin = keras.Sequential([keras.Input(X.shape[1:]), normlab.WeightNormalization(keras.layers.Conv2D(4, 3))])
        twin.load_weights(weights_path)
    expected = ops.convert_to_numpy(model(X))  # the first call initializes from this batch
    for other in (loaded, twin):
        np.testing.assert_allclose(ops.convert_to_numpy(other(X)), expected, atol=1e-5)
        assert bool(ops.convert_to_numpy(other.layers[0].initialized))


# --------------------------------------------------------------------------- recurrent layers


@pytest.mark.parametrize("kind", list(GATES))
def test_rnn_normalizes_the_recurrent_kernel_as_tf_addons(kind):
    # TF Addons: v is cell.recurrent_kernel (units, gates * units), the norm over axis 0
    layer = normlab.WeightNormalization(getattr(keras.layers, kind)(2), data_init=False)
    plain = ops.convert_to_numpy(layer.layer(SEQ))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(SEQ)), plain, atol=1e-6)  # g = ||v||
    assert layer.is_rnn and tuple(layer.g.shape) == (2 * GATES[kind],)
    assert [w.name for w in layer.weights] == ["g", "initialized", "kernel", "recurrent_kernel", "bias"]
    g, _, kernel, v, bias = numpy_weights(layer)
    np.testing.assert_allclose(g, np.linalg.norm(v, axis=0), rtol=1e-6)
    rng = np.random.default_rng(6)
    g, v = rng.uniform(0.5, 2.0, size=g.shape).astype("float32"), rng.normal(size=v.shape).astype("float32")
    layer.set_weights([g, np.array(True), kernel, v, bias])
    expected = rnn_reference(kind, SEQ, kernel, reference.weight_norm(v, g), bias)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(SEQ, training=True)), expected, atol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.layer.cell.recurrent_kernel), v)  # still v
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.is_rnn and type(restored.layer) is type(layer.layer)
    with pytest.raises(AttributeError):
        layer.is_rnn = False


def test_rnn_return_state_and_masking():
    outputs = normlab.WeightNormalization(keras.layers.GRU(2, return_state=True), data_init=False)(SEQ)
    assert [tuple(o.shape) for o in outputs] == [(6, 2), (6, 2)]
    tokens = np.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    embedding, lstm = keras.layers.Embedding(5, 3, mask_zero=True), keras.layers.LSTM(2)
    plain = ops.convert_to_numpy(keras.Sequential([keras.Input((4,)), embedding, lstm])(tokens))
    wrapped = keras.Sequential([keras.Input((4,)), embedding, normlab.WeightNormalization(lstm, data_init=False)])
    np.testing.assert_allclose(ops.convert_to_numpy(wrapped(tokens)), plain, atol=1e-6)  # the mask reaches the LSTM


@pytest.mark.parametrize("first_call", ["call", "predict"])
@pytest.mark.parametrize("kind", list(GATES))
def test_rnn_data_init_scales_g_by_the_output_std_as_tf_addons(kind, first_call):
    if first_call == "predict" and BACKEND == "jax":
        pytest.skip("JAX predict cannot initialize")
    rnn = getattr(keras.layers, kind)(2, bias_initializer="random_normal")
    layer = normlab.WeightNormalization(rnn)
    layer.build(SEQ.shape)
    _, _, kernel, v, bias = numpy_weights(layer)
    with pytest.warns(UserWarning, match=r"the paper advises against it"):  # the first call initializes
        if first_call == "predict":  # traced on TensorFlow: the RNN runs inside an ops.cond
            y = keras.Sequential([keras.Input(SEQ.shape[1:]), layer]).predict(SEQ, verbose=0)
        else:
            y = ops.convert_to_numpy(layer(SEQ))
    h = rnn_reference(kind, SEQ, kernel, reference.weight_norm(v), bias)  # run with g = 1
    g = np.tile(1.0 / np.sqrt(h.var(axis=0) + 1e-10), GATES[kind])  # per unit, repeated over gates
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g), g, rtol=1e-4)
    np.testing.assert_array_equal(ops.convert_to_numpy(rnn.cell.bias), bias)  # bias left alone
    np.testing.assert_allclose(y, rnn_reference(kind, SEQ, kernel, reference.weight_norm(v, g), bias), atol=1e-4)


def test_lstm_fit_trains_g_and_the_recurrent_kernel():
    wn = normlab.WeightNormalization(keras.layers.LSTM(3, return_sequences=True, name="lstm"))
    model = keras.Sequential([keras.Input(SEQ.shape[1:]), wn, keras.layers.GlobalAveragePooling1D()])
    model(SEQ)  # the data-dependent initialization, eagerly (required on JAX)
    before = numpy_weights(wn)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(SEQ, np.ones((6, 3), "float32"), batch_size=6, epochs=2, verbose=0)
    for variable, a in zip(wn.weights, before):
        changed = not np.array_equal(ops.convert_to_numpy(variable), a)
        assert changed == (variable.name != "initialized"), f"{variable.name}: changed={changed}"


@pytest.mark.parametrize("kind", list(GATES))
def test_rnn_gradients_reach_g_and_v_exactly(kind):
    wn = normlab.WeightNormalization(getattr(keras.layers, kind)(2), data_init=False)
    wn(SEQ)
    g, _, kernel, v, bias = numpy_weights(wn)
    state = [ops.convert_to_tensor(w) for w in wn.non_trainable_variables]
    cotangent = np.random.default_rng(7).normal(size=(6, 2))

    def wrapped(g, v):
        return wn.stateless_call([g, ops.convert_to_tensor(kernel), v, ops.convert_to_tensor(bias)], state, SEQ)[0]

    got = gradients(wrapped, [g, v], cotangent.astype("float32"))
    expected = finite_differences(
        lambda g, v: rnn_reference(kind, SEQ, kernel, reference.weight_norm(v, g), bias), [g, v], cotangent
    )
    for name, a, b in zip(["g", "v"], got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- remove()


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: keras.layers.Dense(3, activation="tanh"), X),
        (lambda: keras.layers.Conv2D(3, 3, activation="relu"), X),
        (lambda: keras.layers.SimpleRNN(2), SEQ),
        (lambda: keras.layers.LSTM(2, return_sequences=True), SEQ),
        (lambda: keras.layers.GRU(2), SEQ),
    ],
    ids=["dense", "conv2d", "simple_rnn", "lstm", "gru"],
)
def test_remove_returns_the_wrapped_layer_with_the_folded_kernel(make, x):
    layer = make()
    wn = normlab.WeightNormalization(layer)
    y = ops.convert_to_numpy(wn(x))  # data-dependent initialization
    g = ops.convert_to_numpy(wn.g)
    v = wn.layer.cell.recurrent_kernel if wn.is_rnn else wn.layer.kernel
    folded = reference.weight_norm(ops.convert_to_numpy(v), g)
    plain = wn.remove()
    assert plain is layer and type(plain) is type(layer)
    np.testing.assert_allclose(ops.convert_to_numpy(v), folded, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(plain(x)), y, atol=1e-5)
    config = keras.saving.serialize_keras_object(plain)
    assert config["module"] == "keras.layers" and config["class_name"] == type(layer).__name__
    model = keras.Sequential([keras.Input(x.shape[1:]), plain])
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "plain.keras"))
        loaded = keras.saving.load_model(os.path.join(tmp, "plain.keras"))
    assert type(loaded.layers[0]) is type(layer)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), y, atol=1e-5)


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


class MinimalCell(keras.layers.Layer):
    """A custom RNN cell without a `recurrent_kernel`."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, x, states):
        h = ops.matmul(x, self.kernel) + states[0]
        return h, [h]


class ConstantRecurrenceCell(keras.layers.SimpleRNNCell):
    """A SimpleRNNCell subclass whose recurrent kernel is a constant, not a variable."""

    def build(self, input_shape):
        super().build(input_shape)
        self.recurrent_kernel = ops.zeros((self.units, self.units))


def built(wrapper):
    wrapper.build((None, 3))
    return wrapper


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: normlab.WeightNormalization("dense"), TypeError,
         r"Invalid `layer`: expected a Keras layer instance to wrap \(Dense, Conv1D, Conv2D, Conv3D, RNN\)\. "
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
        (lambda: normlab.WeightNormalization(keras.layers.RNN(MinimalCell(2))), ValueError,
         r"Invalid `layer`: expected a recurrent layer whose cell is a SimpleRNNCell, LSTMCell or GRUCell.*"
         r"Received: layer=RNN\(name='rnn.*'\) with cell MinimalCell\. Wrap keras\.layers\.SimpleRNN, LSTM or GRU"),
        (lambda: normlab.WeightNormalization(keras.layers.RNN([keras.layers.GRUCell(2)] * 2)), ValueError,
         r"Invalid `layer`: expected a recurrent layer.*with cell StackedRNNCells\. .*one RNN per cell"),
        (lambda: normlab.WeightNormalization(keras.layers.Bidirectional(keras.layers.LSTM(2))), ValueError,
         r"Invalid `layer`: expected one of Dense, Conv1D, Conv2D, Conv3D, RNN.*Received: layer=Bidirectional"),
        (lambda: normlab.WeightNormalization(keras.layers.RNN(ConstantRecurrenceCell(2)))(SEQ), ValueError,
         r"Invalid `layer`: expected a built recurrent layer whose cell stores a 2-D `recurrent_kernel` "
         r"variable\. Received: .*with cell ConstantRecurrenceCell and recurrent_kernel of type"),
        (lambda: normlab.WeightNormalization(keras.layers.Dense(2), name="wn").remove(), ValueError,
         r"Invalid `remove\(\)`: expected a built wrapper.*Received: remove\(\) on the unbuilt "
         r"WeightNormalization 'wn'\. Call the wrapper on a batch"),
        (lambda: built(normlab.WeightNormalization(keras.layers.Dense(2), name="wn")).remove(), ValueError,
         r"Invalid `remove\(\)`: expected an initialized wrapper.*Received: remove\(\) on WeightNormalization "
         r"'wn' before its initialization.*Call the wrapper once on a batch of data \(two or more samples.*"
         r"or use data_init=False"),
    ],
)
def test_errors_name_argument_value_expectation_and_fix(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_weight_norm_op_needs_a_positive_epsilon():
    """epsilon=0 passed, and a zero kernel gave NaN; the message spoke of a variance."""
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a positive float \(finite; it bounds each "
                                         r"squared norm from below"):
        weight_norm(np.zeros((3, 4), "float32"), epsilon=0.0)
    assert np.all(ops.convert_to_numpy(weight_norm(np.zeros((3, 4), "float32"))) == 0)


def test_v_is_the_normalized_kernel_as_tf_addons():
    dense = normlab.WeightNormalization(keras.layers.Dense(3))
    dense(X[:, 0, 0, :])
    assert dense.v is dense.layer.kernel
    assert dense.kernel_norm_axes == [0] and dense.layer_depth == 3  # TF Addons' other names
    rnn = normlab.WeightNormalization(keras.layers.SimpleRNN(2), data_init=False)
    rnn(SEQ)
    assert rnn.v is rnn.layer.cell.recurrent_kernel


def test_a_wrapped_dense_passes_the_sequence_mask_on():
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    embedding, lstm = keras.layers.Embedding(10, 4, mask_zero=True), keras.layers.LSTM(2)
    wrapper = normlab.WeightNormalization(keras.layers.Dense(3), data_init=False)
    inputs = keras.Input((5,), dtype="int32")
    hidden = wrapper(embedding(inputs))
    assert hidden._keras_mask is not None  # as Dense's own output
    wrapped = ops.convert_to_numpy(keras.Model(inputs, lstm(hidden))(tokens))
    dense = keras.layers.Dense(3)
    plain_in = keras.Input((5,), dtype="int32")
    plain_hidden = embedding(plain_in)
    dense(plain_hidden)
    g, v, bias = (ops.convert_to_numpy(w) for w in (wrapper.g, wrapper.v, wrapper.layer.bias))
    dense.set_weights([reference.weight_norm(v, g).astype("float32"), bias])
    plain = ops.convert_to_numpy(keras.Model(plain_in, lstm(dense(plain_hidden)))(tokens))
    np.testing.assert_allclose(wrapped, plain, atol=1e-6)  # the LSTM skips the padding in both


def test_rnn_data_init_takes_statistics_over_unmasked_steps():
    mask = np.ones(SEQ.shape[:2], bool)
    mask[0, 3:] = mask[1, 2:] = mask[2, 4:] = False  # padding at the end
    rnn = keras.layers.SimpleRNN(2, return_sequences=True, bias_initializer="random_normal")
    layer = normlab.WeightNormalization(rnn)
    layer.build(SEQ.shape)
    kernel, v, bias = (ops.convert_to_numpy(w) for w in (rnn.cell.kernel, layer.v, rnn.cell.bias))
    with pytest.warns(UserWarning, match=r"the paper advises against it"):
        layer(SEQ, mask=mask)
    recurrent = reference.weight_norm(v).astype(np.float64)  # run with g = 1
    h, steps = np.zeros((SEQ.shape[0], 2)), []
    for t in range(SEQ.shape[1]):  # a masked step carries the previous output (Keras' RNN)
        new = np.tanh(SEQ[:, t].astype(np.float64) @ kernel + bias + h @ recurrent)
        h = np.where(mask[:, t, None], new, h)
        steps.append(h)
    outputs = np.stack(steps, axis=1)[mask]  # (unmasked steps, units)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.g), 1.0 / np.sqrt(outputs.var(axis=0) + 1e-10), rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_g_takes_the_kernel_dtype_whatever_the_wrapper_policy(dtype):
    layer = normlab.WeightNormalization(keras.layers.Dense(3), dtype=dtype)
    layer(X[:, 0, 0, :])
    assert layer.g.dtype == layer.v.dtype


@pytest.mark.parametrize("go_backwards", [False, True])
def test_data_init_over_a_padded_sequence_is_the_init_over_the_unpadded_one(go_backwards):
    # The padded steps leave the statistics alone: a batch of equal lengths,
    # padded at the end, initializes g and the bias as the same batch unpadded.
    # (A backwards RNN returns its outputs in the order it ran.)
    mask = np.zeros(SEQ.shape[:2], bool)
    mask[:, :3] = True
    results = []
    for x, m in ((SEQ, mask), (SEQ[:, :3], None)):
        for make in (lambda: keras.layers.SimpleRNN(2, return_sequences=True, go_backwards=go_backwards,
                                                    seed=1, kernel_initializer="glorot_uniform"),
                     lambda: keras.layers.Dense(2)):
            keras.utils.set_random_seed(3)
            layer = normlab.WeightNormalization(make())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the RNN data-init advice
                layer(x, mask=m)
            results.append([ops.convert_to_numpy(w) for w in (layer.g, layer.layer.weights[-1])])
    for padded, unpadded in zip(results[:2], results[2:]):
        for a, b in zip(padded, unpadded):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
