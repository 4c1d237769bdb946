"""Norms applied to a model's input, a sequence ``(batch, 16, 12)`` with a
symbolic batch, exported to ONNX on every backend and run in onnxruntime.

The matrix's models put a ``Conv2D`` first; a norm that meets the model's
input (a sequence model's first layer, or anything after an input cast) makes
another graph. There, PyTorch's export of the general path's RMS norm failed
to load ("Invalid model": onnxruntime's optimizer dropped a node's input).
"""

import keras
import numpy as np
import pytest

import normlab
from tests.export import _formats

SPECS = ["layer", "layer(axis=1)", "rms", "rms(axis=1)", "dyt", "batch", "group(groups=3)", "instance"]


@pytest.mark.parametrize("spec", SPECS)
def test_a_norm_on_the_models_input_exports_to_onnx(spec, tmp_path):
    import onnxruntime

    _formats.BY_ID["onnx"].require()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 12))
    model = keras.Model(inputs, normlab.get(spec)(inputs))
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(3, 16, 12)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    path = str(tmp_path / "model.onnx")
    with _formats._quiet_tracer():
        model.export(path, format="onnx", verbose=False)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
