"""GroupNormalization: the shared harness, references, anchors and errors."""

import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test


@pytest.mark.parametrize(
    "kwargs, shape, trainable",
    [
        (dict(groups=5, axis=3), (2, 6, 6, 10), 2),
        (dict(groups=2, axis=1), (2, 4, 5, 3, 3), 2),  # channels-first 3-D volume
        (dict(groups=-1, center=False), (3, 7, 4), 1),  # 1-D sequence, instance norm
        (dict(groups=1, center=False, scale=False), (2, 3, 3, 4), 0),
    ],
)
def test_harness(kwargs, shape, trainable):
    run_layer_test(normlab.GroupNormalization, kwargs, shape, expected_trainable=trainable)


def test_tfa_anchor_param_count():
    layer = normlab.GroupNormalization(groups=5, axis=3)
    layer.build((None, 26, 26, 10))
    assert layer.count_params() == 20


@pytest.mark.parametrize("groups, axis", [(5, 3), (2, 1), (-1, -1), (1, 2)])
def test_matches_reference(groups, axis):
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(2, 4, 6, 10)).astype("float32")
    channels = x.shape[axis]
    if groups > 1 and channels % groups:
        groups = 1
    layer = normlab.GroupNormalization(
        groups=groups, axis=axis, gamma_initializer="random_uniform", beta_initializer="random_uniform"
    )
    y = ops.convert_to_numpy(layer(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    expected = reference.group_norm(x, groups, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, expected, atol=2e-5)


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_large_offsets_stay_exact_where_keras_does_not(offset):
    """docs/concepts.md (Numerics): float32 at offset + N(0, 1) within 1e-5 of
    float64 on every backend; Keras 3.15's GroupNormalization more than 0.1 off
    at 1e6 on TensorFlow and JAX, NaN on torch."""
    import keras

    x = (offset + np.random.default_rng(0).normal(size=(8, 26, 26, 10))).astype("float32")
    expected = reference.group_norm(x.astype(np.float64), groups=5, axis=-1)
    ours = ops.convert_to_numpy(normlab.GroupNormalization(groups=5)(x))
    assert np.abs(ours - expected).max() < 1e-5
    if not keras.__version__.startswith("3.15."):
        return  # the page quotes Keras 3.15
    theirs = ops.convert_to_numpy(keras.layers.GroupNormalization(groups=5)(x))
    if keras.backend.backend() == "torch":
        assert np.isnan(theirs).any()
    elif offset == 1e6:
        assert np.abs(theirs - expected).max() > 0.1
