"""Layer norm over trailing axes as torch's exporters record it: ATen's
``layer_norm`` of the input less a detached shift per row, one
``LayerNormalization`` node in ONNX (``normlab.backends.torch_export``).
onnxruntime computes that node in one pass, ``E[x^2] - E[x]^2``: without the
shift it is 5e-4 off at an offset of 1e4 and 3e-2 at 1e6; with it, as exact
as the general path's graph."""

import keras
import numpy as np
import pytest

import normlab
from tests.export import _formats

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's exporters")


def _reference(x, axes, gamma, beta, epsilon):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def _hard_rows(shape, offset, seed=0):
    """Rows at ``offset`` whose first 16th (what the shift averages) sits 30
    standard deviations above the rest: the shift is as far from the mean as
    the policy allows."""
    x = np.random.default_rng(seed).standard_normal(shape)
    flat = x.reshape(shape[0], shape[1], -1)
    flat[..., : -(-flat.shape[-1] // 16)] += 30.0
    return (flat.reshape(shape) + offset).astype("float32")


def _model(shape, axis):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape[1:])
    layer = normlab.layers.LayerNormalization(axis=axis, epsilon=1e-3)
    model = keras.Model(inputs, layer(inputs))
    model(np.zeros(shape, "float32"))
    layer.gamma.assign(np.random.default_rng(1).uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
    layer.beta.assign(np.random.default_rng(2).normal(size=layer.beta.shape).astype("float32"))
    return model, layer


def _onnx_session(model, path):
    import onnx
    import onnxruntime

    with _formats._quiet_tracer():
        model.export(path, format="onnx", verbose=False)
    kinds = [node.op_type for node in onnx.load(path).graph.node]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session, kinds


@pytest.mark.parametrize("shape, axis", [((3, 16, 96), -1), ((2, 4, 6, 32), [-2, -1])])
def test_onnx_export_is_one_layer_norm_node_exact_at_offsets(shape, axis, tmp_path):
    _formats.BY_ID["onnx"].require()
    model, layer = _model(shape, axis)
    session, kinds = _onnx_session(model, str(tmp_path / "ln.onnx"))
    assert kinds.count("LayerNormalization") == 1, kinds
    assert not {"Sqrt", "Div", "Pow"} & set(kinds), kinds  # no elementwise statistics of its own
    axes = tuple(range(len(shape) - (len(axis) if isinstance(axis, list) else 1), len(shape)))
    gamma, beta = (np.asarray(keras.ops.convert_to_numpy(w), np.float64) for w in (layer.gamma, layer.beta))
    for offset, tolerance in ((0.0, 2e-6), (1e4, 2e-6), (1e6, 5e-5)):
        x = _hard_rows(shape, offset)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        expected = _reference(x, axes, gamma, beta, 1e-3)
        np.testing.assert_allclose(got, expected, atol=tolerance, err_msg=f"offset {offset}")


def test_torch_export_records_aten_layer_norm_exact_at_offsets():
    import torch

    shape = (3, 16, 96)
    model, layer = _model(shape, -1)
    gamma, beta = (np.asarray(keras.ops.convert_to_numpy(w), np.float64) for w in (layer.gamma, layer.beta))
    program = torch.export.export(model, (keras.ops.convert_to_tensor(np.zeros(shape, "float32")),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("layer_norm" in t for t in targets) == 1, targets
    for offset in (0.0, 1e4, 1e6):
        x = _hard_rows(shape, offset)
        with torch.no_grad():
            got = keras.ops.convert_to_numpy(program.module()(keras.ops.convert_to_tensor(x)))
        np.testing.assert_allclose(got, _reference(x, (2,), gamma, beta, 1e-3), atol=5e-5 if offset == 1e6 else 2e-6)


def test_a_size_only_the_trace_fixes_is_left_to_the_general_path(tmp_path):
    """TorchScript's tracer (Keras' ONNX exporter with a symbolic batch) gives every
    size as a tensor; a layer norm without parameters has nothing that pins the
    reduced size, so it is recorded as the general path's graph, exact all the same."""
    _formats.BY_ID["onnx"].require()
    shape = (3, 16, 96)
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, normlab.layers.LayerNormalization(center=False, scale=False)(inputs))
    model(np.zeros(shape, "float32"))
    session, kinds = _onnx_session(model, str(tmp_path / "ln.onnx"))
    assert "LayerNormalization" not in kinds
    x = _hard_rows(shape, 1e4)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, _reference(x, (2,), 1.0, 0.0, 1e-3), atol=2e-6)
