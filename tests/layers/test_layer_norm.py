"""LayerNormalization: harness, Keras anchors (axis=1 on NHWC, axis lists), reference."""

import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test


@pytest.mark.parametrize(
    "kwargs, shape, params",
    [
        (dict(axis=1, center=True, scale=True), (2, 6, 5, 10), 12),  # axis=1 on NHWC: over H
        (dict(axis=-1), (2, 7, 16), 32),
        (dict(axis=[1, 2, 3], center=False), (2, 3, 4, 5), 60),
        (dict(axis=[-2, -1], scale=False), (2, 3, 4), 12),
    ],
)
def test_harness(kwargs, shape, params):
    trainable = int(kwargs.get("center", True)) + int(kwargs.get("scale", True))
    run_layer_test(normlab.LayerNormalization, kwargs, shape, expected_trainable=trainable, expected_params=params)


@pytest.mark.parametrize("axis", [1, -1, [1, 3], [2, 3]])
def test_matches_reference(axis):
    x = np.random.default_rng(0).normal(1, 2, size=(2, 4, 5, 6)).astype("float32")
    layer = normlab.LayerNormalization(axis=axis, gamma_initializer="random_uniform", beta_initializer="random_normal")
    y = ops.convert_to_numpy(layer(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    np.testing.assert_allclose(y, reference.layer_norm(x, axis, gamma, beta), atol=2e-5)


def test_axis_list_is_kept_in_config():
    assert normlab.LayerNormalization(axis=[1, 2]).get_config()["axis"] == [1, 2]
    assert normlab.LayerNormalization(axis=1).get_config()["axis"] == 1


def test_rms_scaling_from_old_configs():
    assert normlab.LayerNormalization.from_config({"axis": -1, "rms_scaling": False}).axis == -1
    with pytest.raises(ValueError, match=r"Received: rms_scaling=True\. Use RMS normalization"):
        normlab.LayerNormalization(rms_scaling=True)
