"""A mixed-precision model through the OpenVINO exporter on TensorFlow.

TensorFlow's fused batch-norm kernel on a float16 Dense layer's 3-D output
(reshaped to ``(N, L, 1, C)``) came out of OpenVINO's converter 1.3 off
(outputs of about 8); Keras' own layer, and normlab's general path, 0.004."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest

import normlab

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="OpenVINO reads TensorFlow's SavedModel"),
    pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino"),
]


def _perturbed(model):
    rng = np.random.default_rng(3)
    for w in model.weights:
        v = keras.ops.convert_to_numpy(w).astype("float64")
        w.assign((v * rng.uniform(0.5, 1.5, v.shape) + np.where(v == 0, rng.normal(0, 0.5, v.shape), 0)).astype(w.dtype))


@pytest.mark.slow
@pytest.mark.parametrize("first", ["dense", "conv1d"])
def test_batch_norm_after_a_float16_layer_exports_to_openvino(first, tmp_path):
    import openvino

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        shape = (5, 12) if first == "dense" else (9, 12)
        layer = keras.layers.Dense(16) if first == "dense" else keras.layers.Conv1D(16, 3)
        model = keras.Sequential([keras.Input(shape), layer, normlab.BatchNormalization()])
    finally:
        keras.config.set_dtype_policy(previous)
    x = np.random.default_rng(0).normal(0.5, 2, (2, *shape)).astype("float32")
    model(x)
    _perturbed(model)
    expected = keras.ops.convert_to_numpy(model(x, training=False)).astype("float32")
    model.export(str(tmp_path / "m.xml"), format="openvino", verbose=False)
    compiled = openvino.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(x)[0], "float32")
    np.testing.assert_allclose(got, expected, atol=0.01)  # float16 outputs of about 8: 2 ulps
