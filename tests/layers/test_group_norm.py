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
