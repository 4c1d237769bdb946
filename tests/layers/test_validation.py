"""Bad input gets a clear error naming the argument, the value, what was expected and the fix."""

import keras
import numpy as np
import pytest

import normlab
from normlab import ops as nops

LAYERS = [
    normlab.GroupNormalization,
    normlab.InstanceNormalization,
    normlab.LayerNormalization,
    normlab.BatchNormalization,
]


def build(layer, shape):
    layer.build(shape)
    return layer


@pytest.mark.parametrize(
    "groups, pattern",
    [
        (3, r"Invalid `groups`: expected a divisor of the number of channels \(10\).*"
            r"Received: groups=3 with 10 channels \(axis=3\)\. Use one of \[1, 2, 5, 10\], "
            r"or groups=-1 for instance normalization\."),
        (16, r"expected at most the number of channels \(10\).*Received: groups=16 with 10 channels "
             r"\(axis=3\)\. Use a divisor of 10"),
    ],
)
def test_groups_that_do_not_fit_the_channels(groups, pattern):
    with pytest.raises(ValueError, match=pattern):
        build(normlab.GroupNormalization(groups=groups, axis=3), (None, 26, 26, 10))


@pytest.mark.parametrize("groups", [0, -2, -32])
def test_groups_zero_or_below_minus_one(groups):
    with pytest.raises(ValueError, match=rf"expected a positive integer, or -1.*Received: groups={groups}\. Use a divisor"):
        normlab.GroupNormalization(groups=groups)


@pytest.mark.parametrize("groups", [2.0, "4", None, True])
def test_groups_not_an_integer(groups):
    with pytest.raises(TypeError, match=rf"Invalid `groups`: expected an integer.*Received: groups={groups!r} of type"):
        normlab.GroupNormalization(groups=groups)


@pytest.mark.parametrize("cls", LAYERS)
def test_batch_axis_is_rejected(cls):
    with pytest.raises(ValueError, match=r"expected feature axes other than the batch axis 0\. Received: axis=0 for an input of rank 4\. .*axis=-1"):
        build(cls(axis=0), (None, 8, 8, 4))


@pytest.mark.parametrize("cls", LAYERS)
def test_axis_out_of_range(cls):
    with pytest.raises(ValueError, match=r"expected axes in \[-4, 3\] for an input of rank 4\. Received: axis=4 for an input of rank 4"):
        build(cls(axis=4), (None, 8, 8, 4))


@pytest.mark.parametrize("cls", LAYERS)
def test_unknown_channel_dimension(cls):
    with pytest.raises(ValueError, match=r"axis 3 has unknown size None\)\. Give that dimension a fixed size"):
        build(cls(axis=-1, **({"groups": 1} if cls is normlab.GroupNormalization else {})), (None, 8, 8, None))


def test_duplicate_axes():
    with pytest.raises(ValueError, match=r"expected distinct axes\. Received: axis=\[1, -3\] for an input of rank 4\. Remove the repeated axis"):
        build(normlab.LayerNormalization(axis=[1, -3]), (None, 8, 8, 4))


@pytest.mark.parametrize("cls", [normlab.GroupNormalization, normlab.InstanceNormalization, normlab.BatchNormalization])
def test_axis_list_for_single_axis_layers(cls):
    with pytest.raises(TypeError, match=r"expected a single int \(the channel axis\).*Received: axis=\[1, 2\]"):
        cls(axis=[1, 2])


@pytest.mark.parametrize("axis", ["channels", 1.5, [], None])
def test_axis_of_the_wrong_type(axis):
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected an int.*Received: axis="):
        normlab.LayerNormalization(axis=axis)


@pytest.mark.parametrize("cls", LAYERS)
def test_negative_epsilon(cls):
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a non-negative float.*Received: epsilon=-1e-05\. Use a small positive value"):
        cls(epsilon=-1e-5)


def test_epsilon_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"Received: epsilon='1e-3' of type str"):
        normlab.GroupNormalization(epsilon="1e-3")


@pytest.mark.parametrize("momentum", [1.5, -0.1, "0.9"])
def test_batch_norm_momentum_out_of_range(momentum):
    with pytest.raises(ValueError, match=rf"Invalid `momentum`: expected a float in \[0, 1\].*PyTorch.*Received: momentum={momentum!r}"):
        normlab.BatchNormalization(momentum=momentum)


def test_input_with_another_channel_count_after_build():
    layer = normlab.GroupNormalization(groups=2)
    layer(np.zeros((1, 4, 4, 6), "float32"))
    with pytest.raises(ValueError, match="expected axis 3 of input shape to have value 6"):
        layer(np.zeros((1, 4, 4, 8), "float32"))


def test_ops_validate_like_layers():
    x = np.zeros((2, 4, 4, 10), "float32")
    with pytest.raises(ValueError, match=r"Received: groups=4 with 10 channels \(axis=-1\)"):
        nops.group_norm(x, groups=4)
    with pytest.raises(ValueError, match=r"Invalid `gamma`: expected a tensor of shape \(10,\).*Received: gamma.shape=\(4,\)"):
        nops.group_norm(x, groups=2, gamma=np.ones(4, "float32"))
    with pytest.raises(ValueError, match=r"Invalid `mean`: expected per-channel statistics when training=False.*training=True"):
        nops.batch_norm(x)
    with pytest.raises(ValueError, match=r"Received: axis=0 for an input of rank 4"):
        nops.layer_norm(x, axis=0)


def test_errors_surface_in_functional_models():
    inputs = keras.Input((26, 26, 10))
    with pytest.raises(ValueError, match=r"Received: groups=3 with 10 channels"):
        normlab.GroupNormalization(groups=3)(inputs)
