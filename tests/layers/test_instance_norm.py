"""InstanceNormalization: harness, TF Addons anchor, reference, and equivalence with GN."""

import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(axis=3, beta_initializer="random_uniform", gamma_initializer="random_uniform"), (2, 5, 5, 10)),
        (dict(axis=1), (2, 3, 4, 4)),
        (dict(axis=-1), (2, 9, 4)),
    ],
)
def test_harness(kwargs, shape):
    run_layer_test(normlab.InstanceNormalization, kwargs, shape, expected_trainable=2, expected_params=2 * shape[kwargs["axis"]])


def test_matches_reference_channels_first_volume():
    x = np.random.default_rng(0).normal(2, 3, size=(2, 3, 4, 5, 6)).astype("float32")
    layer = normlab.InstanceNormalization(axis=1, gamma_initializer="random_uniform", beta_initializer="random_normal")
    y = ops.convert_to_numpy(layer(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    np.testing.assert_allclose(y, reference.instance_norm(x, 1, gamma, beta), atol=2e-5)


def test_equals_group_norm_with_groups_minus_one_and_with_groups_equal_channels():
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 8)).astype("float32")
    a = normlab.InstanceNormalization()(x)
    b = normlab.GroupNormalization(groups=-1)(x)
    c = normlab.GroupNormalization(groups=8)(x)
    np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(c), atol=1e-6)


def test_accepts_tf_addons_config_with_groups_minus_one():
    layer = normlab.InstanceNormalization.from_config({"axis": 3, "groups": -1, "epsilon": 1e-3})
    assert layer.axis == 3 and layer.get_config()["groups"] == -1


def test_other_groups_are_ignored_with_a_warning_as_in_tf_addons():
    with pytest.warns(UserWarning, match=r"InstanceNormalization ignores groups=4: .*GroupNormalization"):
        layer = normlab.InstanceNormalization(groups=4)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype("float32")
    expected = normlab.InstanceNormalization()(x)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(expected), atol=1e-6)
    assert layer.get_config()["groups"] == -1  # the grouping it uses


@pytest.mark.parametrize("make", [lambda: normlab.InstanceNormalization()(np.ones((4, 3), "float32")),
                                  lambda: normlab.InstanceNormalization().build((4, 3)),  # at build, not at call
                                  lambda: normlab.GroupNormalization(groups=-1).build((4, 3)),
                                  lambda: normlab.ops.instance_norm(np.ones((4, 3), "float32"))],
                         ids=["call", "build", "groups=-1 build", "op"])
def test_rank_two_input_has_no_spatial_axis(make):
    # Each statistic would cover one value: every output 0. TF Addons returned those zeros.
    with pytest.raises(ValueError, match=r"(?i)expected an input of rank >= 3 .*instance ?normalization.*"
                                         r"Received: (input_shape|x\.shape)=\(4, 3\)\. Add a spatial axis"):
        make()
