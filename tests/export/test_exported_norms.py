"""Layer, group and instance norm as torch's exporters record them
(``normlab.backends.torch_export``): ATen's ``layer_norm``/``group_norm`` of
the input less a detached shift per slice, which the runtimes run as one node
(ONNX ``LayerNormalization``/``InstanceNormalization``, OpenVINO
``GroupNormalization``). Those nodes compute in one pass, ``E[x^2] -
E[x]^2``: without the shift onnxruntime's layer norm is 5e-4 off at an offset
of 1e4 and 3e-2 at 1e6, OpenVINO's group norm 1.3e-3 at 1e4; with it, as
exact as the general path's graph. Inputs are checked at a batch and spatial
size other than the one traced (Keras traces a symbolic size as 1)."""

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


def _group_reference(x, axis, groups, gamma, beta, epsilon):
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    grouped = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape) * gamma + beta
    return np.moveaxis(y, -1, axis)


def _hard_positions(shape, axis, offset, seed=0):
    """Channels at ``offset`` whose every 16th position (what a group norm's
    shift averages) sits 30 standard deviations above the rest."""
    x = np.moveaxis(np.random.default_rng(seed).standard_normal(shape), axis, 1)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    flat[:, :, ::16] += 30.0
    return (np.moveaxis(flat.reshape(x.shape), 1, axis) + offset).astype("float32")


GROUP_CASES = {
    "group-channels-last": (lambda: normlab.layers.GroupNormalization(4, axis=-1), (None, None, 8), -1, 4),
    "group-channels-first": (lambda: normlab.layers.GroupNormalization(2, axis=1), (8, None, None), 1, 2),
    "instance-3d": (lambda: normlab.layers.InstanceNormalization(axis=-1), (None, 6, 5, 3), -1, 3),
}


def _group_model(case):
    make, input_shape, axis, groups = GROUP_CASES[case]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    layer = make()
    model = keras.Model(inputs, layer(inputs))
    traced = tuple(4 if d is None else d for d in (2,) + input_shape)
    model(np.zeros(traced, "float32"))
    channels = ((None,) + input_shape)[axis]
    layer.gamma.assign(np.random.default_rng(1).uniform(0.5, 1.5, (channels,)).astype("float32"))
    layer.beta.assign(np.random.default_rng(2).normal(size=(channels,)).astype("float32"))
    run_shape = tuple(12 if d is None else d for d in (3,) + input_shape)  # other sizes than traced
    params = [np.asarray(keras.ops.convert_to_numpy(w), np.float64) for w in (layer.gamma, layer.beta)]
    return model, run_shape, axis, groups, params


def _expected_group(x, axis, groups, params):
    gamma, beta = params
    shape = [1] * x.ndim
    shape[axis] = -1
    moved = _group_reference(x, axis, groups, 1.0, 0.0, 1e-3)
    return moved * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("case", GROUP_CASES)
def test_onnx_export_of_group_norm_is_one_instance_norm_node_exact_at_offsets(case, tmp_path):
    _formats.BY_ID["onnx"].require()
    model, run_shape, axis, groups, params = _group_model(case)
    session, kinds = _onnx_session(model, str(tmp_path / "gn.onnx"))
    assert kinds.count("InstanceNormalization") == 1, kinds
    assert not {"Sqrt", "Div", "Pow"} & set(kinds), kinds
    for offset, tolerance in ((0.0, 3e-6), (1e4, 3e-6), (1e6, 5e-5)):
        x = _hard_positions(run_shape, axis, offset)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, _expected_group(x, axis, groups, params), atol=tolerance,
                                   err_msg=f"offset {offset}")


@pytest.mark.parametrize("case", GROUP_CASES)
def test_openvino_export_of_group_norm_is_its_group_norm_node_exact_at_offsets(case, tmp_path):
    _formats.BY_ID["openvino"].require()
    import openvino

    model, run_shape, axis, groups, params = _group_model(case)
    path = str(tmp_path / "gn.xml")
    with _formats._quiet_tracer():
        model.export(path, format="openvino", verbose=False)
    core = openvino.Core()
    ir = core.read_model(path)
    kinds = [op.get_type_name() for op in ir.get_ops()]
    assert kinds.count("GroupNormalization") == 1, kinds
    request = core.compile_model(ir, "CPU").create_infer_request()
    for offset, tolerance in ((0.0, 3e-6), (1e4, 3e-6), (1e6, 5e-5)):
        x = _hard_positions(run_shape, axis, offset)
        got = request.infer([x])[0]
        np.testing.assert_allclose(got, _expected_group(x, axis, groups, params), atol=tolerance,
                                   err_msg=f"offset {offset}")


def test_torch_export_records_aten_group_norm_exact_at_offsets():
    import torch

    model, run_shape, axis, groups, params = _group_model("group-channels-last")
    shape = (3, 12, 12, 8)
    program = torch.export.export(model, (keras.ops.convert_to_tensor(np.zeros(shape, "float32")),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("group_norm" in t for t in targets) == 1, targets
    for offset in (0.0, 1e4, 1e6):
        x = _hard_positions(shape, axis, offset)
        with torch.no_grad():
            got = keras.ops.convert_to_numpy(program.module()(keras.ops.convert_to_tensor(x)))
        np.testing.assert_allclose(got, _expected_group(x, axis, groups, params), atol=5e-5 if offset == 1e6 else 3e-6)


def test_torchscript_trace_keeps_sizes_symbolic_and_gradients_exact():
    """``torch.jit.trace`` (what Keras hands OpenVINO) records the same ops: the
    traced module serves another batch and spatial size, and its gradient
    (ATen's backward on the centered input) matches the eager model's at an
    offset."""
    import torch

    model, run_shape, axis, groups, params = _group_model("group-channels-last")
    with _formats._quiet_tracer():
        traced = torch.jit.trace(model, (keras.ops.convert_to_tensor(np.zeros((2, 4, 4, 8), "float32")),))
    x = _hard_positions(run_shape, axis, 1e4)
    weights = np.random.default_rng(3).normal(size=run_shape).astype("float32")

    def loss_gradient(fn):
        xt = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        y = fn(xt)
        (y * torch.from_numpy(weights).to(y.device)).sum().backward()
        return keras.ops.convert_to_numpy(y.detach()), keras.ops.convert_to_numpy(xt.grad)

    got, got_grad = loss_gradient(traced)
    eager, eager_grad = loss_gradient(model)
    np.testing.assert_allclose(got, _expected_group(x, axis, groups, params), atol=3e-6)
    np.testing.assert_allclose(got_grad, eager_grad, atol=2e-5 * np.abs(eager_grad).max())


RMS_CASES = {
    "trailing": ((16, 24), -1),
    "two-axes-apart": ((4, 5, 6), [1, 3]),
    "mixed-float16": ((16, 24), -1),
    "near-epsilon": ((16, 24), -1),  # a mean square of 1.3e-5: epsilon (1e-6) shows
}


@pytest.mark.parametrize("case", RMS_CASES)
def test_onnx_export_of_rms_norm_loads_in_onnxruntime_and_matches_float64(case, tmp_path):
    """The general path's graph of an RMS norm applied to a model's input (a
    cast of ``x`` recorded after its mean square) failed to load: onnxruntime's
    optimizer dropped a node's input ("Invalid model")."""
    _formats.BY_ID["onnx"].require()
    input_shape, axis = RMS_CASES[case]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    layer = normlab.layers.RMSNormalization(axis=axis, dtype="mixed_float16" if case == "mixed-float16" else None)
    model = keras.Model(inputs, layer(inputs))
    model(np.zeros((2,) + input_shape, "float32"))
    gamma = np.random.default_rng(1).uniform(0.5, 1.5, layer.scale.shape)
    layer.scale.assign(gamma.astype("float32"))
    session, kinds = _onnx_session(model, str(tmp_path / "rms.onnx"))
    scale = 1e-3 if case == "near-epsilon" else 1.0
    x = (np.random.default_rng(2).normal(3.0, 2.0, size=(3,) + input_shape) * scale).astype("float32")
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    axes = (len(input_shape),) if axis == -1 else tuple(axis)
    x64 = x.astype(np.float16 if case == "mixed-float16" else np.float32).astype(np.float64)
    shape = [1] * x.ndim
    for a, d in zip(axes, gamma.shape):
        shape[a] = d
    expected = x64 / np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + 1e-6) * gamma.astype("float32").reshape(shape)
    tolerance = 2e-3 if case == "mixed-float16" else 2e-6  # (a float16 output)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tolerance, atol=tolerance)
