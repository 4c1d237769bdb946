"""normlab layers inside Keras: parity with Keras' own layers, models, fit, jit and mixed
precision (``.keras`` files across backends: test_keras_files.py)."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab

BACKEND = keras.backend.backend()


def _copy_weights_and_compare(ours, theirs, x, training=False, atol=2e-5):
    kwargs = {"training": training} if training else {}
    theirs(x, **kwargs) if training else theirs(x)
    ours(x, **kwargs) if training else ours(x)
    ours.set_weights(theirs.get_weights())
    expected = ops.convert_to_numpy(theirs(x, **kwargs))
    got = ops.convert_to_numpy(ours(x, **kwargs))
    np.testing.assert_allclose(got, expected, atol=atol)


@pytest.mark.parametrize("groups, axis", [(5, 3), (-1, -1), (2, 1), (1, -1)])
def test_group_norm_parity_with_keras(groups, axis):
    x = np.random.default_rng(0).normal(1, 2, size=(2, 6, 6, 10)).astype("float32")
    if axis == 1:
        x = x.transpose(0, 3, 1, 2)
    init = dict(gamma_initializer="random_uniform", beta_initializer="random_uniform")
    _copy_weights_and_compare(
        normlab.GroupNormalization(groups=groups, axis=axis, **init),
        keras.layers.GroupNormalization(groups=groups, axis=axis, **init),
        x,
    )


@pytest.mark.parametrize("axis", [1, -1, [1, 2, 3]])
def test_layer_norm_parity_with_keras(axis):
    if BACKEND == "torch" and axis != -1:
        pytest.skip("Keras' own LayerNormalization fails on torch for non-trailing axes "
                    "(it hands them to F.layer_norm, which only normalizes trailing axes); "
                    "normlab's result is checked against the float64 reference instead.")
    x = np.random.default_rng(0).normal(1, 2, size=(2, 6, 5, 10)).astype("float32")
    init = dict(gamma_initializer="random_uniform", beta_initializer="random_uniform")
    _copy_weights_and_compare(
        normlab.LayerNormalization(axis=axis, **init), keras.layers.LayerNormalization(axis=axis, **init), x
    )


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis", [3, 1])
def test_batch_norm_parity_with_keras(axis, training):
    x = np.random.default_rng(0).normal(1, 2, size=(8, 6, 5, 10)).astype("float32")
    ours, theirs = normlab.BatchNormalization(axis=axis), keras.layers.BatchNormalization(axis=axis)
    _copy_weights_and_compare(ours, theirs, x, training=training)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):  # same moving-average updates
        np.testing.assert_allclose(a, b, atol=1e-5)


def classic_cnn(norm_layer, *, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(10, 3),
            norm_layer,
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


NORMS = {
    "group": lambda: normlab.GroupNormalization(groups=5, axis=3),
    "instance": lambda: normlab.InstanceNormalization(axis=3, beta_initializer="random_uniform", gamma_initializer="random_uniform"),
    "layer": lambda: normlab.LayerNormalization(axis=1),
    "batch": lambda: normlab.BatchNormalization(axis=3),
}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 28, 28)).astype("float32"), rng.integers(0, 10, n)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_classic_cnn_trains(norm, jit_compile):
    if jit_compile and BACKEND == "torch":
        pytest.skip("jit_compile=True on torch means torch.compile of the whole train step (~100 s on "
                    "2 cores); test_torch_compile_matches_eager compiles the layers themselves.")
    model = classic_cnn(NORMS[norm]())
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert np.isfinite(model.predict(x, verbose=0)).all()


def test_functional_model_channels_first_volume():
    inputs = keras.Input((4, 6, 6, 6))  # channels-first 3-D volume
    h = normlab.GroupNormalization(groups=2, axis=1)(inputs)
    h = normlab.InstanceNormalization(axis=1)(h)
    h = normlab.BatchNormalization(axis=1)(h)
    h = normlab.LayerNormalization(axis=[2, 3, 4])(h)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling3D(data_format="channels_first")(h))
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(4, 4, 6, 6, 6)).astype("float32")
    model.fit(x, np.zeros((4, 4), "float32"), verbose=0)
    assert model.predict(x, verbose=0).shape == (4, 4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_mixed_precision(policy, norm):
    keras.config.set_dtype_policy(policy)
    model = classic_cnn(NORMS[norm]())
    layer = model.layers[2]
    assert layer.compute_dtype == policy.split("_")[1]
    assert all(w.dtype == "float32" for w in layer.weights)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data(32)
    model.fit(x * 300.0, y, batch_size=16, epochs=1, verbose=0)  # large activations: no overflow
    big = x[:4, 1:27, 1:27, None] * 6e4 * np.ones((1, 1, 1, 10), "float32")
    out = model.layers[2](ops.cast(big, policy.split("_")[1]))
    assert np.isfinite(ops.convert_to_numpy(ops.cast(out, "float32"))).all()


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the torch backend's jit_compile")
def test_torch_compile_matches_eager():
    import torch

    layers = [
        normlab.GroupNormalization(groups=2),
        normlab.InstanceNormalization(),
        normlab.LayerNormalization(axis=[1, 2]),
        normlab.BatchNormalization(),
    ]

    def forward(v):
        for layer in layers:
            v = layer(v, training=True) if isinstance(layer, normlab.BatchNormalization) else layer(v)
        return v

    x = torch.randn(4, 6, 6, 4, device=keras.ops.zeros(()).device) + 100.0  # on Keras' device
    eager = forward(x).detach()
    for layer in layers:  # undo the eager call's moving-average update
        if isinstance(layer, normlab.BatchNormalization):
            layer.moving_mean.assign(np.zeros(4, "float32"))
    compiled = torch.compile(forward)
    y = compiled(x)
    y.sum().backward()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(eager), atol=1e-5)


@pytest.mark.parametrize(
    "make_keras, make_ours",
    [
        (keras.layers.BatchNormalization, normlab.BatchNormalization),
        (keras.layers.LayerNormalization, normlab.LayerNormalization),
        (lambda: keras.layers.GroupNormalization(groups=2), lambda: normlab.GroupNormalization(groups=2)),
        (keras.layers.RMSNormalization, normlab.RMSNormalization),
        (lambda: keras.layers.SpectralNormalization(keras.layers.Dense(3)),
         lambda: normlab.SpectralNormalization(keras.layers.Dense(3))),
    ],
    ids=["batch", "layer", "group", "rms", "spectral"],
)
def test_public_attributes_and_methods_of_keras_layers_exist(make_keras, make_ours):
    # Code written against Keras' layer reads its public attributes (a weight, a
    # setting) and calls its public methods: each exists on normlab's, a weight
    # where Keras' is a weight.
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    theirs, ours = make_keras(), make_ours()
    theirs(x), ours(x)
    base = set(vars(keras.layers.Layer())) | set(dir(keras.layers.Wrapper))
    for name, value in vars(theirs).items():
        if name.startswith("_") or name in base:
            continue
        assert hasattr(ours, name), name
        assert isinstance(getattr(ours, name), keras.Variable) == isinstance(value, keras.Variable), name
    methods = [n for n in dir(type(theirs)) if not n.startswith("_") and n not in base]
    assert [n for n in methods if not hasattr(ours, n)] == []


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph's unknown sizes")
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize("norm", ["group", "evonorm_s0", "instance", "layer", "frn", "switchable", "evonorm_b0", "rms"])
def test_a_spatial_size_that_is_0_only_at_run_time(norm, fast):
    """In a graph with unknown spatial sizes (``predict`` retraced for a new
    sequence length), a length of 0 failed in channels-last group norm and
    EvoNorm-S0: an empty slice's statistics were spread to size 1 along its
    axes ("Unable to broadcast tensor of shape [2,0,2,1]"). Keras' own group
    norm, and normlab eagerly, return the empty input."""
    import contextlib

    import tensorflow as tf

    from normlab import backends
    from tests.layers.test_dtypes import NORMS

    layer = NORMS[norm]()
    layer.build((None, 4, 4, 8))
    step = tf.function(lambda x: layer(x, training=False), input_signature=[tf.TensorSpec([None, None, None, 8])])
    with contextlib.nullcontext() if fast else backends.disabled():
        for shape in ((2, 0, 4, 8), (2, 4, 0, 8), (2, 3, 4, 8)):
            y = step(tf.ones(shape))
            assert tuple(y.shape) == shape
            assert np.isfinite(y.numpy()).all()


def _parameter_gradients(layer, x, step=None):
    """The gradients of ``sum(layer(x, training=True)**2)`` w.r.t. ``x`` and the layer's
    trainable weights, through ``stateless_call`` (``step``: a wrapper such as tf.function)."""
    import inspect

    from normlab.testing.autodiff import gradients

    kwargs = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}
    state = [v.value for v in layer.non_trainable_variables]

    def fn(x, *weights):
        y = layer.stateless_call(list(weights), state, x, **kwargs)[0]
        return y * y

    weights = [ops.convert_to_numpy(v) for v in layer.trainable_variables]
    return gradients(fn if step is None else step(fn), [x, *weights], np.ones(x.shape, "float32"))


@pytest.mark.parametrize("shape", [(0, 4, 4, 8), (2, 0, 4, 8)], ids=["no-sample", "no-position"])
@pytest.mark.parametrize("norm", ["group", "instance", "layer", "batch", "rms", "frn", "evonorm_b0", "evonorm_s0",
                                  "switchable", "lrn", "dyt"])
def test_an_empty_input_gives_zero_gradients(norm, shape):
    """Statistics over no element were 0 / 0: with no position per sample, group,
    instance, filter response and EvoNorm-S0 gave NaN gradients for gamma, which the
    optimizer writes into the weights. Nothing depends on a weight there: every gradient is 0."""
    from tests.layers.test_dtypes import NORMS

    layer = NORMS[norm]()
    layer.build((None, 4, 4, 8))
    for grad in _parameter_gradients(layer, np.zeros(shape, "float32")):
        np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph's unknown sizes")
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize("spec, shape", [([None, 4, 4, 8], (0, 4, 4, 8)), ([None, 32, 32, 8], (0, 32, 32, 8)),
                                         ([2, 4, None, 8], (2, 4, 0, 8))], ids=["batch", "fused-batch", "spatial"])
@pytest.mark.parametrize("norm", ["group", "instance", "batch", "frn", "evonorm_b0", "evonorm_s0", "switchable"])
def test_gradients_of_an_input_that_is_empty_only_at_run_time(norm, spec, shape, fast):
    """A batch of 0 in a graph with an unknown batch size (a replica's empty share of
    the last batch under ``MirroredStrategy.fit``) gave batch norm's gamma (switchable
    norm's variance weights) a NaN gradient, all-reduced into every replica's weights
    (Keras' own BatchNormalization does the same); the eager layer, which sees the 0,
    returns its input. The gradients are 0."""
    import contextlib

    import tensorflow as tf

    from normlab import backends
    from tests.layers.test_dtypes import NORMS

    layer = NORMS[norm]()
    layer.build((None, *shape[1:3], 8) if shape[0] == 0 else (None, 4, 4, 8))

    def step(fn):
        signature = [tf.TensorSpec(spec)] + [tf.TensorSpec(v.shape) for v in layer.trainable_variables]
        return tf.function(fn, input_signature=signature)

    with contextlib.nullcontext() if fast else backends.disabled():
        grads = _parameter_gradients(layer, np.zeros(shape, "float32"), step)
    for grad in grads:
        np.testing.assert_array_equal(grad, np.zeros_like(grad))
