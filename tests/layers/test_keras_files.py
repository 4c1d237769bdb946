"""``.keras`` files move between backends: the fixtures saved on each backend
(see ``keras_files.py``) load here, in-process, with the outputs they had."""

import keras
import numpy as np
import pytest

import normlab  # noqa: F401  (registers the layers for loading)
from tests.layers import keras_files


@pytest.mark.parametrize("saved_on", keras_files.BACKENDS)
def test_a_file_saved_on_any_backend_loads_with_identical_outputs(saved_on):
    model_path, data_path = keras_files.paths(saved_on)
    model = keras.saving.load_model(model_path)
    data = np.load(data_path)
    y = keras.ops.convert_to_numpy(model(data["x"], training=False))
    np.testing.assert_allclose(y, data["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("saved_on", keras_files.BACKENDS)
def test_a_graph_of_ops_saved_on_any_backend_loads_with_identical_outputs(saved_on):
    model_path, data_path = keras_files.paths(saved_on, "ops")
    model = keras.saving.load_model(model_path)
    data = np.load(data_path)
    ys = [keras.ops.convert_to_numpy(t) for t in model(data["x"])]
    assert len(ys) == 3
    for i, y in enumerate(ys):
        np.testing.assert_allclose(y, data[f"y{i}"], rtol=1e-5, atol=1e-5)


def test_the_fixture_is_up_to_date_with_the_layers():
    # A layer whose config or weights changed must come with regenerated fixtures.
    model = keras.saving.load_model(keras_files.paths("tensorflow")[0])
    fresh = keras_files.build_model()
    assert [type(layer).__name__ for layer in model.layers] == [type(layer).__name__ for layer in fresh.layers]
    assert [w.shape for w in model.weights] == [w.shape for w in fresh.weights]
    assert [layer.get_config().keys() for layer in model.layers[1:]] == \
        [layer.get_config().keys() for layer in fresh.layers[1:]]
