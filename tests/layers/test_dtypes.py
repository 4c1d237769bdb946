"""Every normalization layer under mixed precision, with integer inputs and in float64.

Keras' own GroupNormalization and LayerNormalization take a float32 input
as it is under ``mixed_float16`` (no autocast) and create their weights with
``autocast=False``; every normlab norm does, so inputs beyond float16's range
(65504) normalize to finite values, weights read in a float16 autocast scope
keep their value, and integer images are normalized, not truncated.
"""

import keras
import numpy as np
import pytest
from keras import ops

import normlab

#: Every activation norm, built for a (batch, 4, 4, 8) input.
NORMS = {
    "group": lambda **kw: normlab.GroupNormalization(groups=2, **kw),
    "instance": lambda **kw: normlab.InstanceNormalization(**kw),
    "layer": lambda **kw: normlab.LayerNormalization(**kw),
    "layer_image": lambda **kw: normlab.LayerNormalization(axis=[1, 2, 3], **kw),
    "batch": lambda **kw: normlab.BatchNormalization(**kw),
    "rms": lambda **kw: normlab.RMSNormalization(**kw),
    "frn": lambda **kw: normlab.FilterResponseNormalization(use_tlu=True, learned_epsilon=True, **kw),
    "evonorm_b0": lambda **kw: normlab.EvoNormB0(**kw),
    "evonorm_s0": lambda **kw: normlab.EvoNormS0(groups=2, **kw),
    "switchable": lambda **kw: normlab.SwitchableNormalization(**kw),
    "lrn": lambda **kw: normlab.LocalResponseNormalization(size=3, **kw),
    "dyt": lambda **kw: normlab.DynamicTanh(**kw),
}
#: The norms that subtract a mean (the rest divide an uncentered input).
CENTERED = {"group", "instance", "layer", "layer_image", "batch", "switchable"}


def test_every_registered_activation_norm_is_covered():
    # AdaIN's own file runs these checks on [content, style].
    activation = {name for name, entry in normlab.registry().items() if entry.kind == "activation"} - {"none"}
    assert activation <= {n.split("_image")[0] for n in NORMS}


def _large_input(seed=0):
    rng = np.random.default_rng(seed)
    return (7e4 + 100.0 * rng.normal(size=(2, 4, 4, 8))).astype("float32")


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_mixed_float16_input_beyond_float16_range_stays_finite(norm, training):
    if norm == "batch" and not training:
        pytest.skip("inference with the initial moving statistics (0, 1) returns x itself, 7e4")
    x = _large_input()
    reference = NORMS[norm]()
    expected = ops.convert_to_numpy(reference(x, training=training))
    layer = NORMS[norm](dtype="mixed_float16")
    y = layer(x, training=training)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y = ops.convert_to_numpy(ops.cast(y, "float32"))
    assert np.isfinite(y).all()
    if norm in CENTERED:  # then the result is O(1): float16's precision is the only loss
        np.testing.assert_allclose(y, expected, atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_weights_keep_their_value_inside_a_float16_autocast_scope(norm):
    from keras.src.backend import AutocastScope

    layer = NORMS[norm]()
    layer.build((2, 4, 4, 8))
    for weight in layer.weights:
        if not keras.backend.is_float_dtype(weight.dtype):
            continue
        large = np.full(weight.shape, 7e4, "float32")
        with AutocastScope("float16"):
            weight.assign(large)
            np.testing.assert_array_equal(ops.convert_to_numpy(weight.value), large)


@pytest.mark.parametrize("dtype", ["uint8", "int32"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_integer_inputs_are_normalized_in_float32(norm, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(2, 4, 4, 8)).astype(dtype)
    y = NORMS[norm]()(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    expected = NORMS[norm]()(x.astype("float32"), training=True)
    np.testing.assert_allclose(ops.convert_to_numpy(y), ops.convert_to_numpy(expected), atol=1e-5)


def test_integer_inputs_under_mixed_precision_come_back_in_the_compute_dtype():
    x = np.arange(2 * 4 * 4 * 8).reshape(2, 4, 4, 8).astype("uint8")
    y = normlab.GroupNormalization(groups=2, dtype="mixed_bfloat16")(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"



@pytest.mark.parametrize("norm", sorted(NORMS))
def test_int32_inputs_beyond_float16_range_into_a_float16_layer_are_normalized_in_float32(norm):
    """They were cast to the float16 variable dtype first: inf, and NaN statistics
    (LayerNormalization and RMSNormalization returned all NaN)."""
    x = (7e4 + np.random.default_rng(3).integers(0, 256, size=(2, 4, 4, 8))).astype("int32")
    y = NORMS[norm](dtype="float16")(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    expected = ops.convert_to_numpy(NORMS[norm]()(x.astype("float32"), training=True))
    y = ops.convert_to_numpy(ops.cast(y, "float32"))
    assert np.isfinite(y).all()
    if norm in CENTERED:  # O(1) results: float16's rounding of the weights and the output only
        np.testing.assert_allclose(y, expected, atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("dtype", ["uint8", "int32"])
@pytest.mark.parametrize("policy", ["mixed_float16", "float16", "float64"])
def test_tlu_returns_integer_inputs_in_its_compute_dtype(policy, dtype):
    """As every norm does (and its symbolic output says); it returned float32."""
    x = np.arange(16).reshape(2, 8).astype(dtype)
    layer = normlab.layers.TLU(dtype=policy)
    y = layer(x)
    symbolic = layer.compute_output_spec(keras.KerasTensor((2, 8), dtype=dtype))
    assert keras.backend.standardize_dtype(symbolic.dtype) == layer.compute_dtype
    expected = layer.compute_dtype if policy != "float64" or _float64_available() else "float32"  # JAX without x64
    assert keras.backend.standardize_dtype(y.dtype) == expected
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(y, "float32")), np.arange(16).reshape(2, 8))

def test_rms_norm_is_finite_where_keras_overflows():
    x = np.full((2, 4, 8), 7e4, "float32")
    y = ops.convert_to_numpy(ops.cast(normlab.RMSNormalization(dtype="mixed_float16")(x), "float32"))
    np.testing.assert_allclose(y, 1.0, atol=1e-3)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_a_float64_layer_computes_a_float32_input_in_float64(norm):
    # As Keras' layers do: the input is widened to the compute dtype first, so a
    # float32 input gives what its float64 copy gives (JAX without x64 has no
    # float64: both are float32 there).
    x = (1e3 + np.random.default_rng(2).normal(size=(2, 4, 4, 8))).astype("float32")
    layer = NORMS[norm](dtype="float64")
    from_64 = ops.convert_to_numpy(layer(x.astype("float64"), training=True))
    from_32 = ops.convert_to_numpy(layer(x, training=True))
    assert from_32.dtype == from_64.dtype
    np.testing.assert_array_equal(from_32, from_64)


def _float64_available():
    return keras.backend.standardize_dtype(ops.convert_to_tensor(np.zeros(1)).dtype) == "float64"


@pytest.mark.parametrize("norm", ["batch", "switchable", "evonorm_b0"])
def test_float64_moving_statistics_update_in_float64(norm):
    """The moving averages of a float64 layer: Keras' torch backend multiplied a float64 variable by a
    Python momentum as float32 (2.6e-8 relative after 5 steps)."""
    if not _float64_available():
        pytest.skip("no float64 on this backend's configuration (JAX without x64)")
    rng = np.random.default_rng(0)
    layer = NORMS[norm](dtype="float64", momentum=0.7)
    expected = np.ones(8)
    for _ in range(5):
        x = 3.0 + 2.0 * rng.normal(size=(4, 5, 3, 8))
        layer(x, training=True)
        n = x.size / 8
        variance = x.var((0, 1, 2)) * (n / (n - 1) if norm == "evonorm_b0" else 1.0)  # EvoNorm: unbiased
        expected = 0.7 * expected + 0.3 * variance
    got = ops.convert_to_numpy(layer.moving_variance)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_integer_inputs_into_a_float64_layer_are_normalized_in_float64():
    """float32 cannot tell 2**24 + 1 from 2**24: the integers are widened to the layer's float64."""
    if not _float64_available():
        pytest.skip("no float64 on this backend's configuration (JAX without x64)")
    x = np.array([[16777217, 16777216, 16777219, 16777216]], "int32")
    y = ops.convert_to_numpy(normlab.LayerNormalization(dtype="float64")(x))
    centered = x - x.astype("float64").mean()
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, centered / np.sqrt((centered**2).mean() + 1e-3), atol=1e-6)


def test_float64_ops_compute_in_float64():
    """``ops.maximum`` on Keras' torch backend computes two float64 tensors in float32 (TLU, EvoNorm-B0's
    denominator, weight norm's floor): 4e-8 relative; TensorFlow's cast of a Python number rounded
    DynamicTanh's alpha through float32."""
    if not _float64_available():
        pytest.skip("no float64 on this backend's configuration (JAX without x64)")
    rng = np.random.default_rng(0)
    x, tau, w = rng.normal(size=(3, 5, 4, 8)), rng.normal(size=8), rng.normal(size=(3, 3, 4, 5))
    var, instance_var = x.var((0, 1, 2)), x.var((1, 2), keepdims=True)
    cases = [
        (normlab.ops.tlu(x, tau), np.maximum(x, tau)),
        (normlab.ops.evo_norm_b0(x, training=True), x / np.maximum(np.sqrt(var + 1e-3), x + np.sqrt(instance_var + 1e-3))),
        (normlab.ops.weight_norm(w), w / np.linalg.norm(w.reshape(-1, 5), axis=0)),
    ]
    if keras.backend.backend() != "jax":  # Keras' JAX tanh promotes float64 with a Python float to float32
        cases.append((normlab.ops.dynamic_tanh(x, 0.7), np.tanh(0.7 * x)))
    for got, expected in cases:
        got = ops.convert_to_numpy(got)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("wrapper", ["std_conv", "weight_norm"])
def test_float64_weight_wrappers_read_their_kernel_in_float64(wrapper):
    """Keras' autocast scope of None reported a float64 variable as float32 on TensorFlow, so the wrappers
    standardized or normalized a float64 kernel in float32 (2.3e-7 off)."""
    if not _float64_available():
        pytest.skip("no float64 on this backend's configuration (JAX without x64)")
    keras.utils.set_random_seed(0)
    if wrapper == "std_conv":
        layer = normlab.StdConv2D(4, 3, dtype="float64")
        layer.build((2, 6, 6, 3))
        kernel = ops.convert_to_numpy(layer.kernel)
        centered = kernel - kernel.mean((0, 1, 2))
        expected = centered / np.sqrt(centered.var((0, 1, 2)) + layer.epsilon)
        got = layer.standardized_kernel()
    else:  # at initialization g = |w| per unit: the layer computes what the Dense layer does
        inner = keras.layers.Dense(4, dtype="float64")
        layer = normlab.WeightNormalization(inner, data_init=False, dtype="float64")
        x = np.random.default_rng(1).normal(size=(2, 12))
        got = layer(x)
        expected = ops.convert_to_numpy(inner(x))  # (Keras' torch matmul of float64 rounds to float32)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("wrapper_dtype, inner_dtype", [("float32", "float64"), ("float64", "float32")])
def test_weight_wrappers_keep_the_inner_layers_dtype(wrapper_dtype, inner_dtype):
    """``g`` and ``u`` are made in the wrapped kernel's dtype, whatever the wrapper's policy; a full-precision
    scope of the wrapper's own dtype cast them, and on torch their assignments landed in the cast copy
    (u never updated, data init never ran, ``remove()`` left the kernel as it was)."""
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(inner_dtype)
    spectral = normlab.SpectralNormalization(keras.layers.Dense(3, dtype=inner_dtype), dtype=wrapper_dtype)
    spectral.build((None, 5))
    u = ops.convert_to_numpy(spectral.vector_u).copy()
    spectral(x, training=True)
    assert not np.allclose(ops.convert_to_numpy(spectral.vector_u), u)
    weight = normlab.WeightNormalization(keras.layers.Dense(3, dtype=inner_dtype), data_init=True, dtype=wrapper_dtype)
    weight(x, training=True)
    assert not np.allclose(ops.convert_to_numpy(weight.g), 1.0)  # initialized from the batch
    kernel, y = ops.convert_to_numpy(weight.layer.kernel).copy(), ops.convert_to_numpy(weight(x))
    inner = weight.remove()
    assert not np.allclose(ops.convert_to_numpy(inner.kernel), kernel)
    np.testing.assert_allclose(ops.convert_to_numpy(inner(x)), y, atol=1e-5)
