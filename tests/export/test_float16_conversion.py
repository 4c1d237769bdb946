"""ONNX files exported on every backend convert to float16 with
onnxruntime's converter (``convert_float_to_float16``) and run. The converter
mishandles a ``Max`` inside an ``If`` branch (the node it adds is not found):
the JAX fast paths' statistics keep their ``Max`` (the variance's clamp)
outside the ``cond`` that chooses plain or shifted moments; TensorFlow's
exported graphs have no ``cond`` (its ``IsInf`` and ``If`` failed the
conversion too; docs/deploying.md)."""

import importlib.util

import keras
import numpy as np
import pytest

import normlab
from tests.export import _formats

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")

LAYERS = {
    "group": lambda: normlab.GroupNormalization(groups=4),
    "instance": lambda: normlab.InstanceNormalization(),
    "layer": lambda: normlab.LayerNormalization(),
    "layer-all-axes": lambda: normlab.LayerNormalization(axis=[1, 2, 3]),
    "rms": lambda: normlab.RMSNormalization(),
    "batch": lambda: normlab.BatchNormalization(),
    "filter-response": lambda: normlab.FilterResponseNormalization(),
}
#: Where the exported graph keeps the fast paths' cond (the converter's ``If`` case).
CONDS = {"jax": {"group", "instance", "layer", "layer-all-axes"}}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_float16_conversion_loads_and_runs(name, tmp_path):
    import onnx
    import onnxruntime
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, LAYERS[name]()(keras.layers.Conv2D(8, 3)(inputs)))
    x = np.random.default_rng(0).normal(0.5, 2.0, size=(4, 8, 8, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x))
    path = str(tmp_path / "model.onnx")
    with _formats._quiet_tracer():
        model.export(path, format="onnx", verbose=False)
    graph = onnx.load(path)
    kept = name in CONDS.get(keras.backend.backend(), set())
    assert ("If" in [node.op_type for node in graph.graph.node]) == kept  # (the statistics' cond)
    half = str(tmp_path / "half.onnx")
    onnx.save(convert_float_to_float16(graph, keep_io_types=True), half)
    session = onnxruntime.InferenceSession(half, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, atol=1e-2 * float(np.abs(want).max()))
