"""A model keeps running eagerly after it was exported.

An exporter traces the model; nothing it traced may stay behind for the
eager calls that follow. jax2onnx traces with ``jax.numpy`` functions of
its own: JAX's hooks, each under its own ``jax.jit``, kept those traces in
their caches, and every later eager call of the exported shapes failed
("MLIR translation rule for primitive 'jax.numpy.sum' not found").

The model is exported at a batch size it has not run before (the matrix's
model ran one inference call at :data:`_cases.BATCH`), then called at it.
"""

from __future__ import annotations

import keras
import numpy as np

from tests.export import _cases, _formats
from tests.export.test_export_matrix import ATOL

#: A batch size the model has not run at before its export.
BATCH = _cases.BATCH + 1

#: The norms whose fast paths run under a jit of their own on JAX, and the batch norm beside them.
CASES = [_cases.BY_ID[i] for i in ("group", "instance", "layer", "layer-3-axes", "rms", "batch")]


def test_a_model_runs_eagerly_at_the_shape_it_was_exported_at(tmp_path):
    _formats.BY_ID["onnx"].require()
    import onnxruntime

    model = _cases.branches(_cases.full_model(), CASES)
    x = _cases.inputs(batch=BATCH, seed=5)
    path = str(tmp_path / "model.onnx")
    signature = [keras.InputSpec(shape=(BATCH,) + _cases.INPUT_SHAPE, dtype="float32", name="images")]
    with _formats._quiet_tracer():
        model.export(path, format="onnx", verbose=False, input_signature=signature)
    after = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float64)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(exported, after, rtol=0, atol=ATOL * max(1.0, float(np.abs(after).max())))
