"""What TorchScript's tracer (Keras' ONNX and OpenVINO exporters on torch)
records for normlab's layers: no cast of an input already on Keras' device,
no warning that the trace may not generalize, and the general path's graph
(``normlab.backends.disabled()``) loads in onnxruntime."""

import warnings

import keras
import numpy as np
import pytest

import normlab
from normlab import layers as L
from normlab.ops.axes import float_tensor
from tests.export import _formats

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="TorchScript's tracer")

LAYERS = {
    "batch": lambda: L.BatchNormalization(),
    "group": lambda: L.GroupNormalization(groups=3),
    "instance": lambda: L.InstanceNormalization(),
    "layer": lambda: L.LayerNormalization(),
    "rms": lambda: L.RMSNormalization(),
    "rms_axis_1": lambda: L.RMSNormalization(axis=1),
}


def test_float_tensor_returns_a_tensor_on_keras_device_itself():
    import torch

    x = torch.ones(2, 3)
    assert float_tensor(x) is x
    graph = torch.jit.trace(lambda t: float_tensor(t) * 2, torch.ones(2, 3)).graph
    assert "aten::to" not in str(graph), graph


def test_a_layer_takes_a_float_input_on_keras_device_as_it_is():
    import torch

    x = torch.ones(2, 3)
    layer = L.LayerNormalization()
    assert layer.float_input(x) is x
    graph = torch.jit.trace(lambda t: layer.float_input(t) * 2, x).graph
    assert "aten::to" not in str(graph), graph
    assert L.LayerNormalization(dtype="float64").float_input(x).dtype == torch.float64


def test_float_tensor_still_converts_what_is_not_a_float_tensor_there():
    import torch

    assert float_tensor(torch.ones(2, dtype=torch.int32)).dtype == torch.float32
    assert float_tensor(np.ones(2, "float64")).dtype == torch.float64
    with keras.device("meta"):
        moved = float_tensor(torch.ones(2))
    assert moved.device.type == "meta"


def _model(make, shape):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, make()(keras.layers.Dense(shape[-1])(inputs)))
    model(np.zeros((2, *shape), "float32"))
    return model


@pytest.mark.parametrize("fast", [True, False], ids=["fast_paths", "general_path"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_onnx_export_warns_nothing_from_normlab_and_matches_eager(tmp_path, name, fast):
    import onnxruntime

    _formats.BY_ID["onnx"].require()
    keras.utils.set_random_seed(0)
    shape = (8, 8, 6) if name in ("batch", "group", "instance") else (16, 12)
    model = _model(LAYERS[name], shape)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fast:
            model.export(path, format="onnx", verbose=False)
        else:
            with normlab.backends.disabled():
                model.export(path, format="onnx", verbose=False)
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "normlab" in w.filename]
    assert not ours, ours
    # Loads with onnxruntime's default optimizations (the general path's RMS
    # graph once carried a cast of x that its optimizer mishandled).
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(2.0, 3.0, (2, *shape)).astype("float32")
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))
