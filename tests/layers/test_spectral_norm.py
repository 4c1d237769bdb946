"""SpectralNormalization: float64 references, SVD, both modes pinned, parity with keras.layers.SpectralNormalization,
channels-first, errors."""

import os
import tempfile
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.ops.weights import power_iteration, spectral_norm
from normlab.testing import reference

# One input shape throughout keeps JAX's per-shape compilations few.
X = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 6, 7, 4)).astype("float32")
X_FIRST = np.transpose(X, (0, 3, 1, 2))


def numpy_(x):
    return ops.convert_to_numpy(x)


def test_training_call_matches_float64_reference():
    layer = normlab.SpectralNormalization(keras.layers.Conv2D(4, 3, bias_initializer="random_normal"),
                                          power_iterations=2)
    layer(X)
    kernel, bias, u0 = numpy_(layer.layer.kernel), numpy_(layer.layer.bias), numpy_(layer.vector_u)
    y = numpy_(layer(X, training=True))
    w, u, sigma = reference.spectral_norm(kernel, u0, power_iterations=2)
    np.testing.assert_allclose(numpy_(layer.vector_u), u, atol=1e-5)
    np.testing.assert_allclose(y, reference.conv(X, w, bias), atol=1e-4)
    # the kernel variable keeps W: the normalization is applied on the fly
    np.testing.assert_array_equal(numpy_(layer.layer.kernel), kernel)


def test_inference_uses_the_stored_u_without_updating_it():
    layer = normlab.SpectralNormalization(keras.layers.Dense(5))
    x = X
    layer(x, training=True)
    u = numpy_(layer.vector_u)
    kernel, bias = numpy_(layer.layer.kernel), numpy_(layer.layer.bias)
    y = numpy_(layer(x))
    np.testing.assert_array_equal(numpy_(layer.vector_u), u)
    w, _, sigma = reference.spectral_norm(kernel, u, power_iterations=0)
    np.testing.assert_allclose(sigma, np.linalg.norm(kernel.astype(np.float64) @ u.ravel()), rtol=1e-6)  # |W u|
    np.testing.assert_allclose(y, x @ w + bias, atol=2e-5)


def test_sigma_converges_to_the_svd_top_singular_value():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 4)).astype("float32")
    u = rng.normal(size=(1, 4)).astype("float32")
    w, u, sigma = spectral_norm(kernel, u, power_iterations=50)
    np.testing.assert_allclose(float(numpy_(sigma)), reference.top_singular_value(kernel), rtol=1e-5)
    np.testing.assert_allclose(reference.top_singular_value(numpy_(w)), 1.0, rtol=1e-5)
    # one iteration per training call converges across calls, since u persists
    layer = normlab.SpectralNormalization(keras.layers.Conv2D(4, 3))
    layer(X)
    layer.layer.kernel.assign(kernel)
    for _ in range(30):
        layer(X, training=True)
    np.testing.assert_allclose(reference.top_singular_value(numpy_(layer.normalized_kernel())), 1.0, rtol=1e-4)


@pytest.mark.parametrize("make", [lambda: keras.layers.Dense(4), lambda: keras.layers.Conv2D(4, 3)],
                         ids=["dense", "conv2d"])
def test_training_matches_keras_spectral_normalization(make):
    keras.utils.set_random_seed(0)  # the kernel; float32 rounding of the two power iterations differs by ~2e-6
    x = X
    theirs = keras.layers.SpectralNormalization(make(), power_iterations=2)
    ours = normlab.SpectralNormalization(make(), power_iterations=2)
    in_place = normlab.SpectralNormalization(make(), power_iterations=2, in_place=True)
    for layer in (theirs, ours, in_place):
        layer(x)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights] == ["kernel", "vector_u", "bias"]
    ours.set_weights(theirs.get_weights())  # what a migrating user does: the same order as Keras'
    in_place.set_weights(theirs.get_weights())
    for _ in range(3):
        expected = numpy_(theirs(x, training=True))
        np.testing.assert_allclose(numpy_(ours(x, training=True)), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(numpy_(in_place(x, training=True)), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(numpy_(ours.vector_u), numpy_(theirs.vector_u), atol=1e-5)
    # in_place=True is Keras' layer: kernel overwritten, used as stored in inference
    np.testing.assert_allclose(numpy_(in_place.layer.kernel), numpy_(theirs.layer.kernel), atol=1e-6)
    np.testing.assert_allclose(numpy_(in_place(x)), numpy_(theirs(x)), atol=1e-5)
    # the default keeps W and normalizes on the fly: still spectral norm ~1 in inference
    assert not np.allclose(numpy_(ours.layer.kernel), numpy_(theirs.layer.kernel))
    np.testing.assert_allclose(
        reference.top_singular_value(numpy_(ours.normalized_kernel())),
        reference.top_singular_value(numpy_(theirs.layer.kernel)), rtol=0.05,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_keras_apply_layer_numbers_pin_both_modes(data_format):
    # Keras' test_apply_layer: a 2x2 kernel of ones on an image of ones; unnormalized
    # output 4, largest singular value of the kernel (as a 4x1 matrix) 2.
    images = np.ones((1, 2, 2, 1) if data_format == "channels_last" else (1, 1, 2, 2), "float32")

    def make(**kwargs):
        conv = keras.layers.Conv2D(1, 2, kernel_initializer="ones", data_format=data_format)
        return normlab.SpectralNormalization(conv, power_iterations=8, **kwargs)

    def outputs(layer):  # inference, training, inference again
        return [float(numpy_(layer(images, training=t)).squeeze()) for t in (False, True, False)]

    default, keras_like = make(), make(in_place=True)
    assert not default.in_place
    assert outputs(default) == pytest.approx([2.0, 2.0, 2.0], abs=1e-6)  # normalized at every call
    np.testing.assert_array_equal(numpy_(default.layer.kernel), 1.0)  # the variable keeps W
    assert outputs(keras_like) == pytest.approx([4.0, 2.0, 2.0], abs=1e-6)  # stored kernel until trained
    np.testing.assert_allclose(numpy_(keras_like.layer.kernel), 0.5, atol=1e-6)  # overwritten: W / sigma
    if data_format == "channels_last":  # Keras' own layer (channels-first convs need oneDNN on TF CPU)
        theirs = keras.layers.SpectralNormalization(
            keras.layers.Conv2D(1, 2, kernel_initializer="ones"), power_iterations=8)
        assert outputs(theirs) == pytest.approx([4.0, 2.0, 2.0], abs=1e-6)


@pytest.mark.parametrize("in_place", [False, True])
def test_channels_first_conv_matches_float64_reference(in_place):
    conv = keras.layers.Conv2D(3, 3, data_format="channels_first", bias_initializer="random_normal")
    layer = normlab.SpectralNormalization(conv, power_iterations=2, in_place=in_place)
    layer.build(X_FIRST.shape)
    kernel, bias, u0 = numpy_(conv.kernel), numpy_(conv.bias), numpy_(layer.vector_u)
    if not in_place:  # inference before any training step: sigma = |W unit(u)|
        w0, _, _ = reference.spectral_norm(kernel, u0, power_iterations=0)
        y = np.transpose(numpy_(layer(X_FIRST)), (0, 2, 3, 1))
        np.testing.assert_allclose(y, reference.conv(X, w0, bias), atol=1e-4)
    w, _, _ = reference.spectral_norm(kernel, u0, power_iterations=2)
    y = np.transpose(numpy_(layer(X_FIRST, training=True)), (0, 2, 3, 1))
    np.testing.assert_allclose(y, reference.conv(X, w, bias), atol=1e-4)


@pytest.mark.parametrize("in_place", [False, True])
def test_embedding_is_supported(in_place):
    """Float outputs of integer ids: Keras' wrapper casts them to the ids' dtype (all zeros)."""
    tokens = np.array([[0, 3, 5], [1, 1, 7]])
    layer = normlab.SpectralNormalization(keras.layers.Embedding(8, 4), power_iterations=3, in_place=in_place)
    layer(tokens)
    table, u = numpy_(layer.layer.embeddings), numpy_(layer.vector_u)
    out = layer(tokens, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    y = numpy_(out)
    w, u, _ = reference.spectral_norm(table, u, 3)
    np.testing.assert_allclose(y, w[tokens], atol=1e-6)
    np.testing.assert_allclose(numpy_(layer.vector_u), u, atol=1e-6)


def test_zero_kernel_stays_finite_and_keeps_u():
    u = np.array([[0.5, 0.5, 0.5, 0.5]], "float32")
    w, new_u, sigma = spectral_norm(np.zeros((4, 4), "float32"), u)
    assert np.all(numpy_(w) == 0) and np.allclose(numpy_(new_u), u)
    diag = np.diag([3.0, 1.0, 1.0, 1.0]).astype("float32")
    _, _, s = power_iteration(diag, np.array([[1.0, 1.0, 0.0, 0.0]], "float32"), 0)
    np.testing.assert_allclose(float(numpy_(s)), np.sqrt(5.0), rtol=1e-6)  # |W unit(u)|


def test_fit_and_keras_saving():
    model = keras.Sequential([
        keras.Input(X.shape[1:]),
        normlab.SpectralNormalization(keras.layers.Conv2D(4, 3, activation="relu")),
        keras.layers.GlobalAveragePooling2D(),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sn = model.layers[0]
    before = [numpy_(w) for w in sn.weights]
    model.fit(X, np.ones((4, 4), "float32"), batch_size=4, epochs=2, verbose=0)
    after = [numpy_(w) for w in sn.weights]
    for name, a, b in zip(["kernel", "vector_u", "bias"], before, after):
        assert not np.allclose(a, b), f"{name} did not change"
    config = sn.get_config()
    assert set(config) == {"layer", "power_iterations", "in_place", "name", "trainable", "dtype"}
    y = numpy_(model(X))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sn.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert type(loaded.layers[0]) is normlab.SpectralNormalization
    np.testing.assert_allclose(numpy_(loaded(X)), y, atol=1e-6)
    np.testing.assert_array_equal(numpy_(loaded.layers[0].vector_u), numpy_(sn.vector_u))


def test_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    layer = normlab.SpectralNormalization(keras.layers.Conv2D(4, 3))
    y = layer(X, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.vector_u.dtype) == "float32"
    u = numpy_(layer.vector_u)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)  # updated, in float32
    assert np.isfinite(numpy_(y).astype("float32")).all()


def test_registry_wraps_the_given_layer():
    layer = normlab.get("sn(power_iterations=3)", layer=keras.layers.Dense(2))
    assert type(layer) is normlab.SpectralNormalization and layer.power_iterations == 3
    assert "not an activation norm" in normlab.registry()["spectral_norm"].summary


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: normlab.SpectralNormalization(keras.layers.Dense(2), power_iterations=0), ValueError,
         r"Invalid `power_iterations`: expected an integer >= 1.*Received: power_iterations=0\. "
         r"Use power_iterations=1"),
        (lambda: normlab.SpectralNormalization(keras.layers.Dense(2), in_place="no"), TypeError,
         r"Invalid `in_place`: expected a bool\. Received: in_place='no' of type str\."),
        (lambda: normlab.SpectralNormalization(keras.layers.BatchNormalization()), ValueError,
         r"Invalid `layer`: expected one of Dense, Conv1D, Conv2D, Conv3D, Conv1DTranspose.*DepthwiseConv2D, "
         r"Embedding \(or a subclass\), with a kernel.*Received: layer=BatchNormalization"),
        (lambda: normlab.SpectralNormalization(keras.layers.SeparableConv2D(2, 3)), ValueError,  # two kernels
         r"Invalid `layer`.*Received: layer=SeparableConv2D"),
        (lambda: normlab.SpectralNormalization(None), TypeError,
         r"Invalid `layer`: expected a Keras layer instance.*Received: layer=None of type NoneType"),
        (lambda: spectral_norm(np.ones((3, 2), "float32"), np.ones((1, 3), "float32")), ValueError,
         r"Invalid `u`: expected a vector of 2 values.*Received: u\.shape=\(1, 3\) for kernel\.shape=\(3, 2\)"),
        (lambda: spectral_norm(np.ones(3, "float32"), np.ones((1, 3), "float32")), ValueError,
         r"Invalid `kernel`: expected a tensor of rank >= 2.*Received: kernel\.shape=\(3,\)"),
        (lambda: power_iteration(np.eye(2, dtype="float32"), np.ones((1, 2), "float32"), -1), ValueError,
         r"Invalid `power_iterations`: expected an integer >= 0.*Received: power_iterations=-1"),
        (lambda: normlab.get("spectral_norm"), ValueError,
         r"Invalid `layer`: expected the layer to modify.*Received: layer=None\."),
    ],
)
def test_errors_name_argument_value_expectation_and_fix(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_weights_files_move_from_keras_spectral_normalization():
    """Migrating from keras.layers.SpectralNormalization: its `.weights.h5` file loads
    (the wrapper's own variables are the kernel, then u, in both)."""
    def model(cls, **kwargs):
        inputs = keras.Input((7,))
        return keras.Model(inputs, cls(keras.layers.Dense(5), name="sn", **kwargs)(inputs))

    keras.utils.set_random_seed(0)
    theirs, ours = model(keras.layers.SpectralNormalization), model(normlab.SpectralNormalization, in_place=True)
    x = np.random.default_rng(0).normal(size=(3, 7)).astype("float32")
    theirs(x, training=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sn.weights.h5")
        theirs.save_weights(path)
        ours.load_weights(path)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(numpy_(a), numpy_(b), err_msg=a.name)
    np.testing.assert_allclose(numpy_(ours(x)), numpy_(theirs(x)), atol=1e-6)
    np.testing.assert_allclose(numpy_(ours(x, training=True)), numpy_(theirs(x, training=True)), atol=1e-5)


def test_files_of_earlier_versions_load_u_alone():
    """Earlier normlab versions tracked u alone as the wrapper's own variable (the
    fixtures in tests/layers/fixtures were saved so, too)."""
    layer = normlab.SpectralNormalization(keras.layers.Dense(4))
    layer(X.reshape(len(X), -1))
    u = np.arange(4, dtype="float32").reshape(1, 4)
    kernel = numpy_(layer.layer.kernel)
    layer.load_own_variables({"0": u})
    np.testing.assert_array_equal(numpy_(layer.vector_u), u)
    np.testing.assert_array_equal(numpy_(layer.layer.kernel), kernel)


def test_power_iteration_checks_matrix_u_and_epsilon():
    """A `u` of the wrong size failed in a backend matmul; `(m,)` returned vectors of the wrong
    rank; epsilon=0 gave NaN for a zero matrix."""
    w = np.random.default_rng(0).normal(size=(36, 5)).astype("float32")
    with pytest.raises(ValueError, match=r"Invalid `u`: expected a vector of 5 values.*Received: u\.shape=\(1, 4\)"):
        power_iteration(w, np.ones((1, 4), "float32"))
    u, v, _ = power_iteration(w, np.ones(5, "float32"))
    assert tuple(u.shape) == (1, 5) and tuple(v.shape) == (1, 36)
    with pytest.raises(ValueError, match=r"Invalid `matrix`: expected a 2-D tensor"):
        power_iteration(w.reshape(6, 6, 5), np.ones((1, 5), "float32"))
    for op in (lambda e: power_iteration(np.zeros((3, 2), "float32"), np.ones((1, 2), "float32"), epsilon=e),
               lambda e: spectral_norm(np.zeros((3, 2), "float32"), np.ones((1, 2), "float32"), epsilon=e)):
        with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a positive float \(finite; it bounds "
                                             r"each squared norm from below; a zero kernel would give NaN"):
            op(0.0)


def test_normalized_weights_and_tf_addons_names_match_the_peers():
    x = X[:, 0, 0, :]
    ours = normlab.SpectralNormalization(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="built wrapper"):
        ours.normalized_weights()
    theirs = keras.layers.SpectralNormalization(keras.layers.Dense(3))
    ours(x), theirs(x)
    theirs.set_weights(ours.get_weights())
    u_before = numpy_(ours.vector_u)
    for a, b in zip(ours.normalized_weights(), theirs.normalized_weights()):  # (u, W / sigma), as Keras
        np.testing.assert_allclose(numpy_(a), numpy_(b), atol=1e-6)
    np.testing.assert_array_equal(numpy_(ours.vector_u), u_before)  # stores nothing
    assert ours.u is ours.vector_u and ours.w is ours.kernel is ours.layer.kernel  # TF Addons' names
    assert ours.w_shape == list(ours.kernel_shape) == [4, 3]


def test_normalized_weights_take_power_iterations_steps_from_the_stored_u():
    """``normalized_weights()`` refines ``u`` by ``power_iterations`` steps, as a
    training call does, and as Keras' wrapper with the same setting."""
    x = X[:, 0, 0, :]
    ours = normlab.SpectralNormalization(keras.layers.Dense(3), power_iterations=3)
    theirs = keras.layers.SpectralNormalization(keras.layers.Dense(3), power_iterations=3)
    ours(x), theirs(x)
    theirs.set_weights(ours.get_weights())
    kernel, u0 = numpy_(ours.kernel), numpy_(ours.vector_u)
    w, u, _ = reference.spectral_norm(kernel, u0, power_iterations=3)
    got_u, got_w = (numpy_(t) for t in ours.normalized_weights())
    np.testing.assert_allclose(got_u, u, atol=1e-6)
    np.testing.assert_allclose(got_w, w, atol=1e-6)
    for a, b in zip(ours.normalized_weights(), theirs.normalized_weights()):
        np.testing.assert_allclose(numpy_(a), numpy_(b), atol=1e-6)
    ours(x, training=True)  # a training call stores the same u
    np.testing.assert_allclose(numpy_(ours.vector_u), u, atol=1e-6)


def test_in_place_under_stateless_training_calls_warns_once():
    """Under stateless calls (``stateless_call``; JAX's ``fit``) the in-place kernel update
    is discarded: the wrapper says so once, and the stored kernel stays as it was."""
    x = X[:, 0, 0, :]
    sn = normlab.SpectralNormalization(keras.layers.Dense(3), in_place=True)
    sn(x)
    kernel = numpy_(sn.kernel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            sn.stateless_call([v.value for v in sn.trainable_variables],
                              [v.value for v in sn.non_trainable_variables], x, training=True)
    messages = [str(w.message) for w in caught if "in_place=True" in str(w.message)]
    assert len(messages) == 1 and "Use in_place=False" in messages[0]
    np.testing.assert_array_equal(numpy_(sn.kernel), kernel)


@pytest.mark.parametrize("inner", ["dense", "embedding"])
def test_mask_is_passed_on_as_the_wrapped_layer_does(inner):
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    inputs = keras.Input((5,), dtype="int32")
    if inner == "dense":
        embed = keras.layers.Embedding(10, 4, mask_zero=True)
        wrapper = normlab.SpectralNormalization(keras.layers.Dense(3))
        outputs, eager = wrapper(embed(inputs)), wrapper(embed(ids))
    else:
        wrapper = normlab.SpectralNormalization(keras.layers.Embedding(10, 4, mask_zero=True))
        outputs, eager = wrapper(inputs), wrapper(ids)
    assert outputs._keras_mask is not None  # symbolic: a model after it sees the mask
    np.testing.assert_array_equal(numpy_(eager._keras_mask), ids != 0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_u_takes_the_kernel_dtype_whatever_the_wrapper_policy(dtype):
    layer = normlab.SpectralNormalization(keras.layers.Dense(3), dtype=dtype)
    layer(X[:, 0, 0, :], training=True)
    assert layer.vector_u.dtype == layer.layer.kernel.dtype  # as Keras' layer


#: Layers keeping their kernel in ``kernel`` (Dense and Conv: ``_kernel``), with an input each.
PLAIN_KERNEL = {
    "conv2d_transpose": (lambda **kw: keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", **kw), X),
    "conv1d_transpose": (lambda **kw: keras.layers.Conv1DTranspose(3, 2, **kw), X[:, 0]),
    "depthwise_conv2d": (lambda **kw: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", **kw),
                         X),
}


@pytest.mark.parametrize("case", PLAIN_KERNEL)
def test_transposed_and_depthwise_convolutions_as_keras_wrapper(case):
    """They were refused; Keras' and TF Addons' wrappers take any layer with a kernel, spectral norm on
    transposed convolutions is common in GAN generators. The matrix is the kernel with every axis but
    the last flattened, as theirs: the same numbers as Keras' layer, and the default mode's output is
    the wrapped layer's with the kernel divided by the reference sigma."""
    make, x = PLAIN_KERNEL[case]
    keras.utils.set_random_seed(0)
    theirs = keras.layers.SpectralNormalization(make(bias_initializer="random_normal"), power_iterations=2)
    ours = normlab.SpectralNormalization(make(bias_initializer="random_normal"), power_iterations=2)
    in_place = normlab.SpectralNormalization(make(bias_initializer="random_normal"), power_iterations=2,
                                             in_place=True)
    for layer in (theirs, ours, in_place):
        layer.build(x.shape)
    ours.set_weights(theirs.get_weights())
    in_place.set_weights(theirs.get_weights())
    kernel, u0, bias = (numpy_(w) for w in theirs.get_weights())
    plain = make(bias_initializer="random_normal")
    plain.build(x.shape)
    w, u, _ = reference.spectral_norm(kernel, u0, power_iterations=2)
    plain.set_weights([w.astype("float32"), bias])
    np.testing.assert_allclose(numpy_(ours(x, training=True)), numpy_(plain(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(numpy_(ours.vector_u), u, atol=1e-5)
    np.testing.assert_allclose(numpy_(in_place(x, training=True)), numpy_(theirs(x, training=True)), atol=1e-5)
    np.testing.assert_allclose(numpy_(in_place.layer.kernel), numpy_(theirs.layer.kernel), atol=1e-6)


@pytest.mark.parametrize("case", ["conv2d_transpose", "depthwise_conv2d"])
def test_transposed_and_depthwise_convolutions_channels_first(case):
    """Through the kernel path's channels-last detour on TensorFlow's CPU (NCHW only with oneDNN), the
    output of the channels-last layer with the same weights, transposed; the file round trip keeps it."""
    make, x = PLAIN_KERNEL[case]
    first = normlab.SpectralNormalization(make(data_format="channels_first", bias_initializer="random_normal"))
    last = normlab.SpectralNormalization(make(bias_initializer="random_normal"))
    first.build(X_FIRST.shape)
    last.build(x.shape)
    last.set_weights(first.get_weights())
    y = numpy_(first(X_FIRST, training=True))
    np.testing.assert_allclose(np.transpose(y, (0, 2, 3, 1)), numpy_(last(x, training=True)), atol=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model = keras.Sequential([keras.Input(X_FIRST.shape[1:]), first])
        model.save(path)
        np.testing.assert_allclose(numpy_(keras.models.load_model(path)(X_FIRST)), numpy_(model(X_FIRST)), atol=1e-6)
