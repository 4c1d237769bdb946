"""Placement specs and the model builder."""

import importlib

import keras
import numpy as np
import pytest

import normlab
from normlab.lab.models import build_model, norm_specs, parameter_counts, parse_placement, split_placement


@pytest.mark.parametrize("placement, expected", [
    ("batch", ["batch"]),
    ("batch>group(groups=5)", ["batch", "group(groups=5)"]),
    (" layer(axis=[1, 2]) > bn ", ["layer(axis=[1, 2])", "bn"]),
    ("none>batch(name='a>b')", ["none", "batch(name='a>b')"]),
])
def test_split_placement(placement, expected):
    assert split_placement(placement) == expected


@pytest.mark.parametrize("placement", ["", "  ", "batch>", ">batch", "batch>>group"])
def test_split_placement_rejects_empty_parts(placement):
    with pytest.raises(ValueError, match="Invalid `norms`"):
        split_placement(placement)


def test_parse_placement_canonicalizes_aliases():
    assert parse_placement("bn>gn(groups=2)") == [("batch", {}), ("group", {"groups": 2})]


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match="Valid names: .*batch.*group") as info:
        parse_placement("batch>grop(groups=5)")
    assert "'group'" in str(info.value)  # the registry's "did you mean"


def test_unknown_argument_is_rejected():
    with pytest.raises(ValueError, match="has no argument 'gruops'"):
        build_model("group(gruops=5)", (28, 28, 1))


@pytest.mark.parametrize("placement, kinds", [
    ("none", ["Identity"]),
    ("batch", ["BatchNormalization"]),
    ("batch>group(groups=5)", ["BatchNormalization", "GroupNormalization"]),
    ("group(groups=5)>batch>layer(axis=1)",
     ["GroupNormalization", "BatchNormalization", "LayerNormalization"]),
])
def test_one_conv_per_norm(placement, kinds):
    model = build_model(placement, (28, 28, 1))
    names = [type(layer).__name__ for layer in model.layers]
    assert names.count("Conv2D") == len(kinds)
    norms = [names[i + 1] for i, name in enumerate(names) if name == "Conv2D"]
    assert norms == kinds
    assert names[-4:] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert model.get_layer(index=1).output.shape[1:] == (26, 26, 10)


def test_tutorial_model_matches_the_classic_parameter_counts():
    # Conv2D(10, 3x3): 100; Flatten 26*26*10 -> Dense(128): 865,408; Dense(10): 1,290.
    assert parameter_counts(build_model("none", (28, 28, 1))) == {
        "trainable": 100 + 865_408 + 1_290, "non_trainable": 0}
    counts = parameter_counts(build_model("batch(axis=3)", (28, 28, 1)))
    assert counts == {"trainable": 100 + 20 + 865_408 + 1_290, "non_trainable": 20}


def test_model_runs_and_outputs_probabilities():
    model = build_model("group(groups=5, axis=3)>batch", (8, 8, 1), 10)
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_deep_arch_repeats_a_single_norm_and_ends_at_4x4():
    assert norm_specs("batch", "deep") == ["batch"] * 4
    model = build_model("group(groups=5)", (28, 28, 1), arch="deep")
    names = [type(layer).__name__ for layer in model.layers]
    assert names.count("Conv2D") == 4 and names.count("GroupNormalization") == 4
    last_conv = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"][-1]
    assert last_conv.output.shape[1:] == (4, 4, 40)


def test_deep_arch_rejects_wrong_norm_count_and_unknown_arch():
    with pytest.raises(ValueError, match="expected 1 or 4 specs"):
        norm_specs("batch>group", "deep")
    with pytest.raises(ValueError, match="Invalid `arch`"):
        norm_specs("batch", "resnet")


def test_a_newly_registered_norm_slots_in():
    def scaled(scale=2.0, **kwargs):
        """Test norm: multiplies by a constant."""
        return keras.layers.Rescaling(scale, **kwargs)

    registry_module = importlib.import_module("normlab.registry")
    normlab.register("labtestnorm", scaled, aliases=("ltn",))
    try:
        model = build_model("ltn(scale=0.5)>batch", (28, 28, 1))
        assert [type(layer).__name__ for layer in model.layers][2] == "Rescaling"
    finally:
        registry_module._NORMS.pop("labtestnorm")
        registry_module._ALIASES.pop("labtestnorm")
        registry_module._ALIASES.pop("ltn")
