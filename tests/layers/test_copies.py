"""Copies of normlab layers and models: ``copy.deepcopy`` and ``pickle``, which Keras 3
supports for its layers and models (both go through its ``.keras`` saving code),
built or not, as Keras' own layers are copied."""

from __future__ import annotations

import copy
import pickle

import keras
import numpy as np
import pytest

import normlab
from tests.layers.keras_files import SHAPE, build_model

COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}


def _normlab_layers(model):
    return [layer for layer in model.layers if type(layer).__module__.startswith("normlab.")]


@pytest.mark.parametrize("how", COPIES)
def test_a_model_of_every_layer_copies_with_its_outputs_and_shares_no_variable(how):
    model = build_model()
    x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    copied = COPIES[how](model)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copied(x)), expected)
    for variable in copied.weights:
        if variable.dtype != "bool":
            variable.assign(np.zeros(variable.shape, variable.dtype))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), expected)


@pytest.mark.parametrize("how", COPIES)
def test_every_layer_copies_before_it_is_built(how):
    """An unbuilt WeightNormalization failed: its load_own_variables read the
    initialization flag, which build creates."""
    layers = _normlab_layers(build_model())
    assert len({type(layer) for layer in layers}) >= 17
    for layer in layers:
        unbuilt = type(layer).from_config(layer.get_config())
        copied = COPIES[how](unbuilt)
        assert type(copied) is type(layer) and not copied.built
        # (A wrapper's inner layer gets a fresh name, as in Keras' own wrappers.)
        assert {**copied.get_config(), "layer": None} == {**unbuilt.get_config(), "layer": None}


def test_an_unbuilt_model_with_data_dependent_init_saves_loads_and_initializes_on_first_call(tmp_path):
    model = keras.Sequential([normlab.WeightNormalization(keras.layers.Dense(4))])  # no Input: unbuilt
    model.save(tmp_path / "unbuilt.keras")
    loaded = keras.saving.load_model(tmp_path / "unbuilt.keras")
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 6)).astype("float32")
    y = keras.ops.convert_to_numpy(loaded(x))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)  # data-dependent init: unit outputs
    np.testing.assert_allclose(y.std(0), 1.0, rtol=1e-4)
