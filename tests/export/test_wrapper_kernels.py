"""Spectral normalization of the kernel layers the export matrix's branches do not hold
(a single output unit, transposed and depthwise convolutions), through ONNX on every backend:
the default wrapper computes sigma in the exported graph."""

import keras
import numpy as np
import pytest

import normlab
from tests.export import _cases, _formats

LAYERS = {
    "dense_1_unit": lambda: keras.layers.Dense(1, bias_initializer="random_normal"),
    "conv2d_1_filter": lambda: keras.layers.Conv2D(1, 3, bias_initializer="random_normal"),
    "conv2d_transpose": lambda: keras.layers.Conv2DTranspose(4, 3, strides=2, bias_initializer="random_normal"),
    "depthwise_conv2d": lambda: keras.layers.DepthwiseConv2D(3, bias_initializer="random_normal"),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_spectral_norm_exports_to_onnx(layer, tmp_path):
    """On JAX, sigma = v W u^T with a transposed (1, 1) u (one output unit, a depthwise kernel of
    multiplier 1) failed to load in onnxruntime: jax2onnx gave the transpose a scalar input."""
    route = _formats.BY_ID["onnx"]
    route.require()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(_cases.INPUT_SHAPE), normlab.SpectralNormalization(LAYERS[layer]())])
    x = np.random.default_rng(0).normal(size=(_cases.BATCH,) + _cases.INPUT_SHAPE).astype("float32")
    model(x, training=True)  # a step of power iteration: u away from its start
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(route.run(model, x, str(tmp_path)), expected, rtol=1e-5, atol=1e-5)
