"""Every normalization layer under mixed precision and with integer inputs.

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
