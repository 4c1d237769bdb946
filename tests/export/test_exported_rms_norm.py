"""RMS norm exported from JAX to ONNX: its mean square is ``Mul`` + ``ReduceMean``.
jax2onnx writes a sum of squares as ``ReduceSumSquare``, which took onnxruntime
twice as long at ``(1, 128, 768)`` (148 against 72 us, one thread)."""

import keras
import numpy as np
import pytest

import normlab
from tests.export import _formats

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's fast path for RMS norm")


def test_onnx_graph_takes_a_mean_of_products_and_matches_float64(tmp_path):
    import onnx
    import onnxruntime

    _formats.BY_ID["onnx"].require()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 96))
    layer = normlab.layers.RMSNormalization()
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(3, 16, 96)).astype("float32")
    model(x)
    gamma = np.random.default_rng(1).uniform(0.5, 1.5, (96,))
    layer.scale.assign(gamma.astype("float32"))
    path = str(tmp_path / "rms.onnx")
    model.export(path, format="onnx", verbose=False)
    kinds = [node.op_type for node in onnx.load(path).graph.node]
    assert "ReduceSumSquare" not in kinds and "ReduceMean" in kinds, kinds
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-6) * gamma.astype("float32")
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)
