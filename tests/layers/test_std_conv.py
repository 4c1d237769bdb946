"""StdConv1D/2D/3D and ScaledStdConv1D/2D/3D: harness, float64 references, timm anchors, errors."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.ops.weights import standardize_weight
from normlab.testing import reference
from normlab.testing.harness import constructor_args, run_layer_test

# Shared inputs: the same shapes throughout keep JAX's per-shape compilations few.
_RNG = np.random.default_rng(0)
X = _RNG.normal(1.0, 2.0, size=(2, 6, 6, 4)).astype("float32")  # NHWC
X_FIRST = np.transpose(X, (0, 3, 1, 2))  # NCHW
X1 = _RNG.normal(size=(2, 8, 4)).astype("float32")
X3 = _RNG.normal(size=(1, 4, 4, 4, 2)).astype("float32")

HARNESS_CASES = [
    (normlab.StdConv2D, dict(filters=4, kernel_size=3, padding="same"), X.shape, 2),
    (normlab.StdConv3D, dict(filters=2, kernel_size=2, padding="same", data_format="channels_first"),
     (1, 2, 4, 4, 4), 2),
    (normlab.ScaledStdConv2D, dict(filters=4, kernel_size=3, padding="same", gamma=1.7), X.shape, 3),
]


@pytest.mark.parametrize("cls, kwargs, shape, trainable", HARNESS_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_harness(cls, kwargs, shape, trainable):
    run_layer_test(cls, kwargs, shape, expected_trainable=trainable, atol=1e-4)


@pytest.mark.parametrize(
    "cls", [normlab.StdConv1D, normlab.StdConv3D, normlab.ScaledStdConv1D, normlab.ScaledStdConv3D]
)
def test_get_config_is_exactly_the_constructor_arguments(cls):
    layer = cls(2, 3)
    assert set(layer.get_config()) == constructor_args(cls) | {"name", "trainable", "dtype"}
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "data_format, groups, epsilon", [("channels_last", 1, 1e-6), ("channels_first", 2, 1e-3)]
)
def test_std_conv2d_matches_float64_reference(data_format, groups, epsilon):
    x = X
    layer = normlab.StdConv2D(
        4, (3, 2), groups=groups, epsilon=epsilon, data_format=data_format,
        kernel_initializer=keras.initializers.RandomNormal(0.5, 0.3), bias_initializer="random_normal",
    )
    xin = x if data_format == "channels_last" else np.transpose(x, (0, 3, 1, 2))
    y = ops.convert_to_numpy(layer(xin))
    if data_format == "channels_first":
        y = np.transpose(y, (0, 2, 3, 1))
    kernel, bias = (ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
    w_hat = reference.standardize_weight(kernel, epsilon)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.standardized_kernel()), w_hat, atol=2e-5)
    np.testing.assert_allclose(y, reference.conv(x, w_hat, bias, groups), atol=1e-4)


def test_channels_first_bias_when_the_width_equals_the_filters():
    # Keras' TensorFlow ops.add mistakes a (1, C, 1, 1) bias for channels-last
    # when the last axis also has C entries; StdConv adds its bias itself.
    layer = normlab.StdConv2D(4, 3, data_format="channels_first", bias_initializer="random_normal")
    y = np.transpose(ops.convert_to_numpy(layer(X_FIRST)), (0, 2, 3, 1))  # output (2, 4, 4, 4)
    kernel, bias = (ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
    expected = reference.conv(X, reference.standardize_weight(kernel), bias)
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_std_conv1d_and_3d_match_float64_reference():
    x1 = X1
    conv1 = normlab.StdConv1D(4, 3)
    y1 = ops.convert_to_numpy(conv1(x1))
    k1 = reference.standardize_weight(ops.convert_to_numpy(conv1.kernel))
    np.testing.assert_allclose(y1, reference.conv(x1, k1, ops.convert_to_numpy(conv1.bias)), atol=1e-4)

    x3 = X3
    conv3 = normlab.StdConv3D(3, (2, 3, 2), use_bias=False)
    y3 = ops.convert_to_numpy(conv3(x3))
    k3 = reference.standardize_weight(ops.convert_to_numpy(conv3.kernel))
    np.testing.assert_allclose(y3, reference.conv(x3, k3), atol=1e-4)


def test_causal_padding_pads_the_past():
    x = X1
    causal = normlab.StdConv1D(4, 3, padding="causal", dilation_rate=2)
    y = ops.convert_to_numpy(causal(x))
    valid = normlab.StdConv1D(4, 3, dilation_rate=2)
    valid(x)
    valid.set_weights(causal.get_weights())
    padded = np.pad(x, ((0, 0), (4, 0), (0, 0)))
    np.testing.assert_allclose(y, ops.convert_to_numpy(valid(padded)), atol=1e-5)


def test_scaled_std_conv2d_matches_timm_formula():
    # timm: batch_norm(w.reshape(1, out, -1), weight=gain * gamma * fan_in ** -0.5, eps=eps)
    x = X
    layer = normlab.ScaledStdConv2D(
        4, 3, groups=2, gamma=1.7139, epsilon=1e-5, gain_initializer="random_uniform",
        kernel_initializer=keras.initializers.RandomNormal(0.2, 0.1),
    )
    y = ops.convert_to_numpy(layer(x))
    assert layer.fan_in == 3 * 3 * 2  # in_channels // groups
    kernel, bias, gain = (ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias, layer.gain))
    w_hat = reference.scaled_standardize_weight(kernel, gain, gamma=1.7139, epsilon=1e-5)
    np.testing.assert_allclose(y, reference.conv(x, w_hat, bias, groups=2), atol=1e-4)


def test_output_is_invariant_to_per_filter_affine_changes_of_the_raw_kernel():
    x = X
    layer = normlab.StdConv2D(4, 3, use_bias=False, epsilon=0.0)
    y = ops.convert_to_numpy(layer(x))
    kernel = ops.convert_to_numpy(layer.kernel)
    scale = np.array([0.5, 2.0, 3.0, 10.0], "float32")
    layer.kernel.assign(kernel * scale + np.array([1.0, -2.0, 0.3, 5.0], "float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), y, atol=1e-4)


def test_kernel_variable_keeps_raw_values_and_saving_stores_them():
    layer = normlab.StdConv2D(4, 3, use_bias=False, kernel_initializer=keras.initializers.Constant(3.0))
    layer(X)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.kernel), 3.0)
    np.testing.assert_allclose(layer.get_weights()[0], 3.0)


def test_scaled_std_conv_preserves_unit_variance():
    # for white unit-variance inputs the output variance is sum(w_hat ** 2) = (gain * gamma) ** 2
    layer = normlab.ScaledStdConv2D(4, 3, gamma=1.7, gain_initializer="random_uniform", use_bias=False)
    layer(X)
    w_hat = ops.convert_to_numpy(layer.standardized_kernel()).reshape(-1, 4)
    gain = ops.convert_to_numpy(layer.gain)
    np.testing.assert_allclose((w_hat ** 2).sum(axis=0), (1.7 * gain) ** 2, rtol=1e-4)


def test_mixed_float16_output_and_float32_statistics():
    x = X
    ref = normlab.ScaledStdConv2D(4, 3)
    y32 = ops.convert_to_numpy(ref(x))
    keras.config.set_dtype_policy("mixed_float16")
    mixed = normlab.ScaledStdConv2D(4, 3)
    mixed(x)
    mixed.set_weights(ref.get_weights())
    y16 = mixed(x)
    assert keras.backend.standardize_dtype(y16.dtype) == "float16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    np.testing.assert_allclose(ops.convert_to_numpy(y16).astype("float32"), y32, atol=2e-2)


def test_standardize_weight_op_axes_and_gain():
    rng = np.random.default_rng(7)
    w = rng.normal(2.0, 3.0, size=(4, 3, 3, 4)).astype("float32")
    # the default: all axes but the last
    np.testing.assert_allclose(
        ops.convert_to_numpy(standardize_weight(w)), reference.standardize_weight(w), atol=1e-5
    )
    # PyTorch layout (out, in, kh, kw): standardize over axes 1-3, gain per axis-0 unit
    gain = rng.uniform(0.5, 2.0, size=4).astype("float32")
    got = ops.convert_to_numpy(standardize_weight(w, axes=[1, 2, 3], epsilon=1e-4, gain=gain))
    expected = np.moveaxis(reference.standardize_weight(np.moveaxis(w, 0, -1), 1e-4, gain), -1, 0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Outputs over two axes: a gain of their shape, with or without size-1 axes anywhere
    w2, g2 = rng.normal(size=(5, 3, 4)).astype("float32"), rng.uniform(0.5, 2.0, size=(3, 4)).astype("float32")
    want = ops.convert_to_numpy(standardize_weight(w2, axes=[0])) * g2
    for gain in (g2, g2[None], g2[:, None, :]):
        np.testing.assert_allclose(ops.convert_to_numpy(standardize_weight(w2, axes=[0], gain=gain)), want, rtol=1e-6)


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_standardize_weight_is_exact_for_large_offsets_and_keeps_dtype(offset):
    # Statistics about a shift, as every norm's: the mean taken at the offset was
    # off by up to 1/16 at 1e6 (2e-2 in the output), 5e-4 at 1e4.
    w = (offset + np.random.default_rng(8).normal(size=(3, 3, 4, 4))).astype("float32")
    got = standardize_weight(w)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(got), reference.standardize_weight(w), atol=2e-6)
    gain = np.random.default_rng(9).uniform(0.5, 2.0, size=4).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(standardize_weight(w, gain=gain)),
                               reference.standardize_weight(w, gain=gain), atol=4e-6)
    half = standardize_weight((w - np.float32(offset)).astype("float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: normlab.StdConv2D(4, 3, epsilon=-1.0), ValueError,
         r"Invalid `epsilon`: expected a non-negative float.*Received: epsilon=-1\.0\..*epsilon=1e-06 \(the default\)"),
        (lambda: normlab.StdConv2D(4, 3, epsilon="small"), TypeError,
         r"Invalid `epsilon`.*Received: epsilon='small' of type str\. Pass a float"),
        (lambda: normlab.ScaledStdConv2D(4, 3, gamma="relu"), TypeError,
         r"Invalid `gamma`: expected a float.*Received: gamma='relu' of type str\. Pass gamma=1\.0"),
        (lambda: standardize_weight(np.ones((3, 4), "float32"), gain=np.ones(3, "float32")), ValueError,
         r"Invalid `gain`: expected one value per output unit.*Received: gain\.shape=\(3,\) for "
         r"kernel\.shape=\(3, 4\)\. Pass a vector with the kernel's last dimension"),
        # The outputs' size but not their order: a transposed gain would have gone to the wrong outputs.
        (lambda: standardize_weight(np.ones((5, 3, 4), "float32"), axes=[0], gain=np.ones((4, 3), "float32")),
         ValueError, r"Invalid `gain`: expected one value per output unit: shape \(3, 4\) or \(1, 3, 4\).*"
                     r"Received: gain\.shape=\(4, 3\)"),
        (lambda: standardize_weight(np.ones((5, 3, 4), "float32"), axes=[0], gain=np.ones(12, "float32")),
         ValueError, r"Invalid `gain`.*Received: gain\.shape=\(12,\)"),
        (lambda: standardize_weight(np.ones((3, 4), "float32"), axes=[2]), ValueError,
         r"Invalid `axes`: expected axes in \[-2, 1\].*Received: axes=\[2\] for an input of rank 2"),
        (lambda: normlab.get("ws"), ValueError,
         r"Invalid `layer`: expected the layer to modify.*Received: layer=None\. Build it around the layer"),
        (lambda: normlab.get("ws", layer=keras.layers.Dense(3)), ValueError,
         r"Invalid `layer`: expected a keras\.layers\.Conv1D, Conv2D or Conv3D.*Received: layer=Dense"),
        # Already standardized: a second standardization is refused, not stacked or half-converted.
        (lambda: normlab.get("ws", layer=normlab.StdConv2D(4, 3)), ValueError,
         r"Invalid `layer`: expected a keras\.layers\.Conv1D, Conv2D or Conv3D.*Received: layer=StdConv2D.*"
         r"Pass a plain convolution"),
        (lambda: normlab.get("sws", layer=normlab.ScaledStdConv1D(4, 3)), ValueError,
         r"Received: layer=ScaledStdConv1D"),
    ],
)
def test_errors_name_argument_value_expectation_and_fix(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_registry_builds_the_standardized_twin_of_a_convolution():
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c1")
    ws = normlab.get("weight_std(epsilon=1e-5)", layer=conv)
    assert type(ws) is normlab.StdConv2D and ws.epsilon == 1e-5
    assert ws.strides == (2, 2) and ws.padding == "same" and ws.name == "c1"
    sws = normlab.get("sws(gamma=2.0)", layer=keras.layers.Conv1D(4, 5))
    assert type(sws) is normlab.ScaledStdConv1D and sws.gamma == 2.0
    assert "not an activation norm" in normlab.registry()["weight_std"].summary


def test_mixed_float16_standardizes_the_float32_kernel():
    """The statistics came from the kernel rounded to float16 inside the call:
    at a mean of 1 and a spread of 0.005 the standardized kernel was 4.5e-2
    off (relative)."""
    rng = np.random.default_rng(0)
    raw = (1.0 + 0.005 * rng.normal(size=(3, 3, 3, 4))).astype("float32")
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    try:
        keras.config.set_dtype_policy("mixed_float16")
        layer = normlab.StdConv2D(4, 3, use_bias=False)
        layer.build(x.shape)
        layer.kernel.assign(raw)
        y = ops.convert_to_numpy(layer(x)).astype("float64")
    finally:
        keras.config.set_dtype_policy("float32")
    r64 = raw.astype("float64")
    kernel = (r64 - r64.mean(axis=(0, 1, 2))) / np.sqrt(r64.var(axis=(0, 1, 2)) + 1e-6)
    want = ops.convert_to_numpy(ops.conv(x, kernel.astype("float32"), padding="valid")).astype("float64")
    assert np.abs(y - want).max() / np.abs(want).max() < 5e-3


def _with_lora(layer, rank=2, seed=0):
    rng = np.random.default_rng(seed)
    layer.enable_lora(rank)
    layer.lora_kernel_a.assign(rng.normal(size=layer.lora_kernel_a.shape).astype("float32"))
    layer.lora_kernel_b.assign(rng.normal(size=layer.lora_kernel_b.shape).astype("float32"))
    return layer


def test_lora_standardizes_the_kernel_with_its_update_once():
    """Keras' Conv adds the LoRA update to the kernel it is handed, which was
    already the standardized ``kernel + update``: the update counted twice
    (32.7 off)."""
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    layer = normlab.StdConv2D(4, 3, use_bias=False)
    layer.build(x.shape)
    _with_lora(layer)
    effective = layer.kernel  # the raw kernel plus the low-rank update
    want = ops.conv(x, standardize_weight(effective, epsilon=1e-6), padding="valid")
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(want), atol=1e-4)
    assert layer.lora_enabled  # restored after the call


@pytest.mark.parametrize("conv", ["StdConv2D", "ScaledStdConv2D"])
def test_a_conv_built_with_lora_rank_has_the_weights_of_a_later_enable_lora(conv, tmp_path):
    """Keras' build ends in enable_lora() where lora_rank is set, which locks
    the layer: the scaled conv's gain, added after it, made the build fail
    (a bare ``ValueError: None``), and a saved LoRA model fail to load."""
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 3)).astype("float32")
    built = getattr(normlab, conv)(4, 3, lora_rank=2, lora_alpha=4.0)
    built(x)
    later = getattr(normlab, conv)(4, 3)
    later.build(x.shape)
    later.enable_lora(2)
    assert [w.name for w in built.weights] == [w.name for w in later.weights]
    assert built.lora_enabled and (built.lora_rank, built.lora_alpha) == (2, 4.0)
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, later(inputs))
    model.save(tmp_path / "lora.keras")
    loaded = keras.saving.load_model(tmp_path / "lora.keras")
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))


@pytest.mark.parametrize("wrapper", ["SpectralNormalization", "WeightNormalization"])
def test_wrappers_refuse_a_lora_layer(wrapper):
    """They normalize the kernel variable; the LoRA update would be added after that, unnormalized."""
    layer = keras.layers.Dense(3)
    wrapped = getattr(normlab, wrapper)(layer)
    x = np.ones((2, 4), "float32")
    wrapped(x)
    _with_lora(layer, rank=1)
    with pytest.raises(ValueError, match="without LoRA"):
        wrapped(x, training=True)


def test_weight_normalization_remove_folds_a_lora_layer():
    """The refusal's advice: ``remove()`` folds ``g * v / ||v||`` into the
    layer, whose own call then adds its LoRA update (it was refused too)."""
    layer = keras.layers.Dense(3)
    wrapped = normlab.WeightNormalization(layer, data_init=False)
    x = np.random.default_rng(2).normal(size=(2, 4)).astype("float32")
    wrapped(x)
    wrapped.g.assign(np.array([0.5, 2.0, 3.0], "float32"))
    folded = ops.convert_to_numpy(wrapped.layer.kernel)
    folded = folded / np.linalg.norm(folded, axis=0) * np.array([0.5, 2.0, 3.0])
    _with_lora(layer, rank=1)
    plain = wrapped.remove()
    assert plain is layer and plain.lora_enabled
    np.testing.assert_allclose(ops.convert_to_numpy(plain._kernel), folded, rtol=1e-5, atol=1e-6)
    update = ops.convert_to_numpy(plain.kernel) - folded
    assert np.abs(update).max() > 0.1  # the layer's own call adds it


def test_spectral_normalization_reads_a_lora_layers_normalized_kernel():
    layer = keras.layers.Dense(3)
    wrapped = normlab.SpectralNormalization(layer)
    wrapped(np.ones((2, 4), "float32"))
    want = ops.convert_to_numpy(wrapped.normalized_kernel())
    _with_lora(layer, rank=1)
    np.testing.assert_allclose(ops.convert_to_numpy(wrapped.normalized_kernel()), want, rtol=1e-6)


@pytest.mark.parametrize("wrapper", ["SpectralNormalization", "WeightNormalization"])
def test_a_saved_wrapper_of_a_lora_layer_loads(wrapper, tmp_path):
    """Earlier versions accepted a LoRA-enabled layer; such a config builds
    (with a warning: a new wrapper refuses it), adds the layer's update
    after the normalization, and a ``.keras`` file of it loads. Keras saves
    the kernel with the update merged in and loads zero LoRA factors, so the
    loaded wrapper normalizes the merged kernel."""
    x = np.random.default_rng(3).normal(size=(2, 4)).astype("float32")
    config = keras.saving.serialize_keras_object(getattr(normlab, wrapper)(keras.layers.Dense(3, lora_rank=1)))
    assert config["config"].pop("refuses_lora")  # an earlier version's config has no marker
    with pytest.warns(UserWarning, match="LoRA-enabled Dense"):
        built = keras.saving.deserialize_keras_object(config)
        built(x)
    rng = np.random.default_rng(4)
    for weight in (built.layer.lora_kernel_a, built.layer.lora_kernel_b):
        weight.assign(rng.normal(size=weight.shape).astype("float32"))

    def normalized(wrapped):
        if wrapper == "SpectralNormalization":
            return ops.convert_to_numpy(wrapped.normalized_kernel())
        kernel = ops.convert_to_numpy(wrapped.layer._kernel)
        return kernel / np.linalg.norm(kernel, axis=0) * ops.convert_to_numpy(wrapped.g)

    update = ops.convert_to_numpy(built.layer.kernel - built.layer._kernel)
    want = x @ (normalized(built) + update) + ops.convert_to_numpy(built.layer.bias)
    np.testing.assert_allclose(ops.convert_to_numpy(built(x)), want, rtol=1e-4, atol=1e-4)

    model = keras.Sequential([keras.Input((4,)), built])
    model.save(tmp_path / "lora.keras")
    with pytest.warns(UserWarning, match="LoRA-enabled Dense"):
        loaded = keras.saving.load_model(tmp_path / "lora.keras").layers[0]
        y = ops.convert_to_numpy(loaded(x))
    want = x @ normalized(loaded) + ops.convert_to_numpy(loaded.layer.bias)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrapper", ["SpectralNormalization", "WeightNormalization"])
def test_a_loaded_wrapper_still_refuses_lora_enabled_later(wrapper):
    x = np.ones((2, 4), "float32")
    wrapped = getattr(normlab, wrapper)(keras.layers.Dense(3))
    wrapped(x)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    clone(x)
    _with_lora(clone.layer, rank=1)
    with pytest.raises(ValueError, match="without LoRA"):
        clone(x, training=True)


@pytest.mark.parametrize("copy", ["clone_model", "keras_file"])
@pytest.mark.parametrize("wrapper", ["SpectralNormalization", "WeightNormalization"])
def test_a_copy_of_a_refused_wrapper_is_refused(wrapper, copy, tmp_path):
    """``enable_lora()`` writes ``lora_rank`` into the layer's config, which
    was taken for an earlier version's file: a clone or a saved and loaded
    copy of a refused wrapper ran (with a warning about an earlier version)."""
    x = np.ones((2, 4), "float32")
    model = keras.Sequential([keras.Input((4,)), getattr(normlab, wrapper)(keras.layers.Dense(3))])
    model(x)
    _with_lora(model.layers[0].layer, rank=1)
    with pytest.raises(ValueError, match="without LoRA"):
        model(x)
    if copy == "keras_file":
        model.save(tmp_path / "refused.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="without LoRA"):  # when the copy is built, or called
            if copy == "clone_model":
                other = keras.models.clone_model(model)
            else:
                other = keras.saving.load_model(tmp_path / "refused.keras")
            other(x)


@pytest.mark.parametrize("wrapper", ["SpectralNormalization", "WeightNormalization"])
def test_a_copy_of_an_accepted_earlier_wrapper_is_accepted(wrapper):
    """A wrapper built from an earlier version's config stays accepted in its clones."""
    x = np.ones((2, 4), "float32")
    config = keras.saving.serialize_keras_object(getattr(normlab, wrapper)(keras.layers.Dense(3, lora_rank=1)))
    del config["config"]["refuses_lora"]
    with pytest.warns(UserWarning, match="LoRA-enabled Dense"):
        built = keras.saving.deserialize_keras_object(config)
        built(x)
    assert "refuses_lora" not in built.get_config()
    with pytest.warns(UserWarning, match="LoRA-enabled Dense"):
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(built))(x)


def test_the_lora_marker_is_only_in_a_lora_wrappers_config():
    assert "refuses_lora" not in normlab.WeightNormalization(keras.layers.Dense(3)).get_config()


@pytest.mark.parametrize("gamma", [float("nan"), float("inf")])
def test_scaled_std_conv_refuses_a_gamma_that_is_not_finite(gamma):
    """It was accepted, and every output was NaN."""
    with pytest.raises(ValueError, match="`gamma`: expected a finite number"):
        normlab.ScaledStdConv2D(3, 3, gamma=gamma)


@pytest.mark.parametrize("make, channels", [
    (lambda: normlab.StdConv2D(4, 1), 1),
    (lambda: normlab.StdConv2D(3, 1, groups=3), 3),  # depthwise 1x1
    (lambda: normlab.ScaledStdConv2D(4, 1), 1),
    (lambda: normlab.StdConv1D(2, 1), 1),
])
def test_a_fan_in_of_one_is_refused(make, channels):
    """One weight per output standardizes to 0: the output was the bias, whatever the input."""
    x = X[..., :channels] if not isinstance(make(), normlab.StdConv1D) else X1[..., :channels]
    with pytest.raises(ValueError, match=r"Invalid `kernel`: expected more than one weight per output unit.*"
                                         r"\(fan-in 1\)\. .*use a plain convolution there"):
        make()(x)
    normlab.StdConv2D(4, 1)(X[..., :2])  # two input channels: a fan-in of 2
    with pytest.raises(ValueError, match="fan-in 1"):
        standardize_weight(np.ones((1, 1, 1, 4), "float32"))


def test_scaled_std_conv_gamma_and_gain_initializer():
    """numpy gammas were refused as not floats; gamma=0 gave a layer whose output is its bias;
    a misspelled gain_initializer got Keras' message, which names no argument."""
    assert normlab.ScaledStdConv2D(4, 3, gamma=np.float32(1.7)).gamma == pytest.approx(1.7)
    assert normlab.ScaledStdConv2D(4, 3, gamma=np.int64(2)).gamma == 2.0
    for gamma in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"Invalid `gamma`: expected a number > 0\.0.*Received: gamma="):
            normlab.ScaledStdConv2D(4, 3, gamma=gamma)
    with pytest.raises(ValueError, match=r"gain_initializer.*onez"):
        normlab.ScaledStdConv2D(4, 3, gain_initializer="onez")


@pytest.mark.parametrize("cls", [normlab.layers.StdConv2D, normlab.layers.ScaledStdConv2D])
@pytest.mark.parametrize("data_format, shape", [("channels_last", (5, 5, None)), ("channels_first", (None, 5, 5))])
def test_an_unknown_channel_count_is_named(cls, data_format, shape):
    """Keras' convolution build failed on it with "unsupported operand type(s) for %: 'NoneType' and 'int'"."""
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected a known number of input channels"):
        cls(2, 1, data_format=data_format)(keras.Input(shape))
    known = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    assert cls(2, 1, data_format=data_format)(keras.Input(known)).shape[1 if data_format == "channels_first" else -1] == 2
