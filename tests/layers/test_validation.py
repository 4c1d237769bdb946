"""Bad input gets a clear error naming the argument, the value, what was expected and the fix."""

import re

import keras
import numpy as np
import pytest
from keras import ops

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


@pytest.mark.parametrize("cls", [*LAYERS, normlab.TLU, normlab.LocalResponseNormalization,
                                 normlab.RMSNormalization, normlab.FilterResponseNormalization])
def test_batch_axis_is_rejected_at_construction(cls):
    with pytest.raises(ValueError, match=r"expected feature axes other than the batch axis 0\. Received: axis=0\. .*axis=-1"):
        cls(axis=0)


def test_negative_axis_reaching_the_batch_axis_is_rejected_at_build():
    with pytest.raises(ValueError, match=r"expected feature axes other than the batch axis 0\. Received: axis=-4 for an input of rank 4"):
        build(normlab.GroupNormalization(axis=-4), (None, 8, 8, 4))


@pytest.mark.parametrize("cls", LAYERS)
def test_axis_out_of_range(cls):
    with pytest.raises(ValueError, match=r"expected axes in \[-4, 3\] for an input of rank 4\. Received: axis=4 for an input of rank 4"):
        build(cls(axis=4), (None, 8, 8, 4))


@pytest.mark.parametrize(
    "make",
    [*LAYERS, normlab.RMSNormalization, normlab.FilterResponseNormalization, normlab.SwitchableNormalization,
     normlab.EvoNormB0, normlab.DynamicTanh, normlab.TLU, normlab.LocalResponseNormalization],
)
def test_compute_output_shape_checks_the_axis_as_build_does(make):
    # As Keras' layers: shape inference raises for an axis the input lacks.
    layer = make(axis=[1, 4]) if make is normlab.FilterResponseNormalization else make(axis=4)
    with pytest.raises(ValueError, match=r"expected axes in \[-4, 3\] for an input of rank 4"):
        layer.compute_output_shape((None, 8, 8, 4))
    assert make().compute_output_shape((None, None, 8, 4)) == (None, None, 8, 4)
    with pytest.raises(ValueError, match=r"expected axes in \[-4, 3\]"):
        normlab.layers.AdaptiveInstanceNormalization(axis=4).compute_output_shape([(2, 8, 8, 4), (2, 4, 4, 4)])


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


@pytest.mark.parametrize("axis", [np.array([1, 2]), range(1, 3), {1: 0, 2: 0}.keys(), (1, 2)])
@pytest.mark.parametrize("cls", [normlab.LayerNormalization, normlab.RMSNormalization, normlab.DynamicTanh])
def test_an_axis_sequence_of_any_kind_keeps_every_axis(cls, axis):
    # An array or a range of axes once kept only its first axis (a wrong answer).
    layer = cls(axis=axis)
    assert layer.axis == [1, 2] and layer.get_config()["axis"] == [1, 2]
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    layer(x)
    assert tuple(layer.gamma.shape) == (3, 4)
    assert cls(axis=np.int64(2)).axis == 2 and cls(axis=np.array(2)).axis == 2


@pytest.mark.parametrize("axis", ["channels", 1.5, [], None])
def test_axis_of_the_wrong_type(axis):
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected an int.*Received: axis="):
        normlab.LayerNormalization(axis=axis)


@pytest.mark.parametrize("cls", LAYERS)
def test_negative_epsilon(cls):
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a non-negative float.*Received: epsilon=-1e-05\. Use a small positive value"):
        cls(epsilon=-1e-5)


@pytest.mark.parametrize("make, fix", [
    (lambda: normlab.RMSNormalization(epsilon=-1.0), "epsilon=1e-06 (the default)"),
    (lambda: normlab.FilterResponseNormalization(epsilon=-1.0), "epsilon=1e-06 (the default)"),
    (lambda: normlab.EvoNormS0(epsilon=0.0), "epsilon=1e-05 (the default)"),
    (lambda: normlab.AdaptiveInstanceNormalization(epsilon=-1.0), "epsilon=1e-05 (the default)"),
    (lambda: normlab.StdConv2D(4, 3, epsilon=-1.0), "epsilon=1e-06 (the default)"),
    (lambda: normlab.GroupNormalization(epsilon=-1.0), "epsilon=0.001 (the default)"),
    (lambda: normlab.EvoNormB0(momentum=2.0), "momentum=0.9 (the default)"),
    (lambda: normlab.BatchNormalization(momentum=2.0), "momentum=0.99 (the default)"),
])
def test_the_fix_suggests_the_layers_own_default(make, fix):
    with pytest.raises(ValueError, match=re.escape(fix)):
        make()


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


# ---------------------------------------------------------------- values once silently accepted

ACTIVATION_NORMS = {
    "group": normlab.GroupNormalization, "instance": normlab.InstanceNormalization,
    "layer": normlab.LayerNormalization, "batch": normlab.BatchNormalization,
    "rms": normlab.RMSNormalization, "frn": normlab.FilterResponseNormalization,
    "evonorm_b0": normlab.EvoNormB0, "evonorm_s0": normlab.EvoNormS0,
    "switchable": normlab.SwitchableNormalization,
}


@pytest.mark.parametrize("epsilon", [float("inf"), float("nan")])
@pytest.mark.parametrize("norm", sorted(ACTIVATION_NORMS))
def test_non_finite_epsilon(norm, epsilon):
    # epsilon=inf once returned all zeros.
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a (non-negative|positive) float \(finite"):
        ACTIVATION_NORMS[norm](epsilon=epsilon)


@pytest.mark.parametrize("op", [lambda x, **kw: nops.group_norm(x, groups=2, **kw), nops.layer_norm,
                                nops.rms_norm, nops.instance_norm])
def test_ops_reject_non_finite_epsilon(op):
    with pytest.raises(ValueError, match=r"Invalid `epsilon`.*Received: epsilon=inf"):
        op(np.ones((2, 4, 4), "float32"), epsilon=float("inf"))


@pytest.mark.parametrize("argument", ["center", "scale"])
@pytest.mark.parametrize("value", ["no", "False", 1, 0.5, None])
@pytest.mark.parametrize("norm", sorted(ACTIVATION_NORMS))
def test_flags_must_be_bools(norm, argument, value):
    # center="no" was once taken for True.
    with pytest.raises(TypeError, match=rf"Invalid `{argument}`: expected a bool.*Received: {argument}={value!r} of type"):
        ACTIVATION_NORMS[norm](**{argument: value})


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda v: normlab.BatchNormalization(renorm=v), "renorm"),
        (lambda v: normlab.BatchNormalization(synchronized=v), "synchronized"),
        (lambda v: normlab.BatchNormalization(use_moving_statistics=v), "use_moving_statistics"),
        (lambda v: normlab.FilterResponseNormalization(use_tlu=v), "use_tlu"),
        (lambda v: normlab.FilterResponseNormalization(learned_epsilon=v), "learned_epsilon"),
        (lambda v: normlab.TLU(affine=v), "affine"),
        (lambda v: normlab.LayerNormalization(rms_scaling=v), "rms_scaling"),
        (lambda v: normlab.WeightNormalization(keras.layers.Dense(2), data_init=v), "data_init"),
        (lambda v: normlab.SpectralNormalization(keras.layers.Dense(2), in_place=v), "in_place"),
    ],
)
def test_other_flags_must_be_bools(make, argument):
    with pytest.raises(TypeError, match=rf"Invalid `{argument}`: expected a bool.*Received: {argument}='yes'"):
        make("yes")
    # NumPy bools (from configs or arrays) are bools, and the config holds Python's (JSON has no np.bool_)
    assert type(make(np.bool_(True)).get_config()[argument]) is bool


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"gamma_initializer": "onez"}, "gamma_initializer"),
        ({"beta_initializer": "zeroes"}, "beta_initializer"),
        ({"gamma_regularizer": "l3"}, "gamma_regularizer"),
        ({"beta_constraint": "nonneg"}, "beta_constraint"),
    ],
)
@pytest.mark.parametrize("norm", sorted(ACTIVATION_NORMS))
def test_unknown_initializer_regularizer_or_constraint_names(norm, kwargs, argument):
    (value,) = kwargs.values()
    with pytest.raises(ValueError, match=rf"Invalid `{argument}`: expected .*Keras {argument.split('_')[1]}.*"
                                         rf"Received: {argument}='{value}' \(Could not interpret.*\)\. Check the spelling"):
        ACTIVATION_NORMS[norm](**kwargs)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: normlab.BatchNormalization(moving_mean_initializer="zeroz"), "moving_mean_initializer"),
        (lambda: normlab.EvoNormB0(v_regularizer="l3"), "v_regularizer"),
        (lambda: normlab.FilterResponseNormalization(tau_initializer="zeroz"), "tau_initializer"),
        (lambda: normlab.SwitchableNormalization(mean_weights_initializer="onez"), "mean_weights_initializer"),
        (lambda: normlab.TLU(alpha_constraint="maxnorm3"), "alpha_constraint"),
    ],
)
def test_unknown_names_for_the_other_weights(make, argument):
    with pytest.raises(ValueError, match=rf"Invalid `{argument}`: expected .*Received: {argument}="):
        make()


@pytest.mark.parametrize("shape", [(4, 3), (4, 1, 1, 3), (4, 3, 1, 1, 1)])
def test_filter_response_norm_at_one_position_needs_a_learned_epsilon(shape):
    # nu2 = x**2 at one position (no spatial axis, or 1x1): x / sqrt(x**2 + eps) is sign(x)
    # unless epsilon is learned.
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    axis = 1 if len(shape) == 5 else -1
    received = re.escape(f"Received: shape={shape}")
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected an input with more than one spatial position.*"
                                         rf"{received}.*Pass learned_epsilon"):
        normlab.FilterResponseNormalization(axis=axis)(x)
    if len(shape) == 2:  # the op: no spatial axis at all (a 1x1 call inside a model built for any size passes)
        with pytest.raises(ValueError, match=rf"{received} without a learned epsilon"):
            nops.filter_response_norm(x, axis=axis)
    y = normlab.FilterResponseNormalization(axis=axis, learned_epsilon=True)(x)
    assert np.isfinite(ops.convert_to_numpy(y)).all()
    normlab.FilterResponseNormalization(axis=axis)(np.ones(shape[:1] + (2,) + shape[1:], "float32"))  # 2 positions
    if len(shape) == 4:  # built for any spatial size: a 1x1 batch is data, not the architecture
        model = keras.Sequential([keras.Input((None, None, 3)), normlab.FilterResponseNormalization()])
        model(x)


def test_evo_norm_s0_takes_groups_or_group_size_not_both():
    with pytest.raises(ValueError, match=r"Invalid `group_size`: expected either a number of groups or a group "
                                         r"size, not both.*Received: groups=4, group_size=2"):
        normlab.EvoNormS0(groups=4, group_size=2)
    layer = normlab.EvoNormS0(group_size=2)
    assert normlab.EvoNormS0.from_config(layer.get_config()).group_size == 2


@pytest.mark.parametrize("cls", [normlab.EvoNormB0, normlab.EvoNormS0])
def test_evo_norm_needs_a_positive_epsilon(cls):
    with pytest.raises(ValueError, match=r"Invalid `epsilon`: expected a positive float.*uncentered.*Received: epsilon=0"):
        cls(epsilon=0.0)


@pytest.mark.parametrize("op, kwargs", [
    (nops.batch_norm, dict(training="no")),
    (nops.batch_norm, dict(training=True, return_stats="yes")),
    (nops.evo_norm_b0, dict(training=1)),
    (nops.switchable_norm, dict(mean_weights=np.ones(3), variance_weights=np.ones(3), training="False")),
])
def test_ops_take_only_bools_for_their_flags(op, kwargs):
    # bool("no") and bool("False") are True: the batch statistics were used.
    x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype("float32")
    name, value = [(k, v) for k, v in kwargs.items() if k in ("training", "return_stats") and v is not True][0]
    with pytest.raises(TypeError, match=rf"Invalid `{name}`: expected a bool \(True or False\)\. "
                                        rf"Received: {name}={value!r} of type {type(value).__name__}"):
        op(x, **kwargs)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(filters=True), r"Invalid `filters`: expected a positive integer\. Received: filters=True"),
    (dict(groups="32"), r"Invalid `groups`: expected a positive integer\. Received: groups='32'"),
    (dict(groups=2.0), r"Invalid `groups`: expected a positive integer\. Received: groups=2\.0"),
    (dict(use_bias="no"), r"Invalid `use_bias`: expected a bool"),
    (dict(kernel_initializer="onez"), r"Invalid `kernel_initializer`: expected a Keras initializer"),
    (dict(bias_constraint="positive"), r"Invalid `bias_constraint`: expected None or a Keras constraint"),
])
@pytest.mark.parametrize("cls", [normlab.StdConv2D, normlab.ScaledStdConv1D])
def test_weight_standardized_convs_check_the_convolution_arguments(cls, kwargs, pattern):
    # Keras' Conv took filters=True for 1 filter and use_bias='no' for a bias,
    # and failed on groups='32' with a comparison error naming no argument.
    with pytest.raises((TypeError, ValueError), match=pattern):
        cls(**{"filters": 4, "kernel_size": 3, **kwargs})


def test_complex_inputs_are_refused_not_cast_to_their_real_part():
    x = ops.convert_to_tensor(np.array([[1 + 1j, 2, 3, 4]], "complex64"))
    with pytest.raises(TypeError, match=r"Invalid `x`: expected a real tensor.*Received: x of dtype complex64"):
        nops.layer_norm(x)
    with pytest.raises(TypeError, match=r"Invalid `inputs`: expected a real tensor.*dtype complex64\. Normalize"):
        normlab.LayerNormalization()(x)


@pytest.mark.parametrize("make", [
    lambda: normlab.StdConv1D(2, 2),
    lambda: normlab.ScaledStdConv1D(2, 2),
    lambda: normlab.SpectralNormalization(keras.layers.Dense(2)),
    lambda: normlab.SpectralNormalization(keras.layers.Conv1D(2, 2)),
    lambda: normlab.WeightNormalization(keras.layers.Dense(2), data_init=False),
], ids=["std_conv", "scaled_std_conv", "spectral_dense", "spectral_conv", "weight_dense"])
def test_kernel_layers_refuse_complex_inputs(make):
    # JAX took them and dropped the imaginary part (a warning only); torch failed in its convolution.
    x = ops.convert_to_tensor((np.ones((2, 3, 4)) + 1j).astype("complex64"))
    with pytest.raises(TypeError, match=r"Invalid `inputs`: expected a real tensor.*dtype complex64"):
        make()(x)


@pytest.mark.parametrize("make", [
    lambda: normlab.BatchNormalization(moving_variance_initializer=None),
    lambda: normlab.LayerNormalization(gamma_initializer=None),
    lambda: normlab.StdConv2D(4, 3, bias_initializer=None),
])
def test_an_initializer_of_none_is_refused(make):
    # Keras filled such a weight with glorot_uniform values: a random gamma, a
    # moving variance with negative entries (NaN at inference).
    with pytest.raises(ValueError, match=r"_initializer=None, which Keras fills with random glorot_uniform values"):
        make()
    normlab.StdConv2D(4, 3, kernel_initializer=None)  # a kernel's default is glorot_uniform: as Keras


def test_a_saved_or_keras_config_with_an_initializer_of_none_still_loads(tmp_path):
    # Its weights follow: a .keras file saved before None was refused, a Keras
    # model's layer converted, a Conv2D's weight-standardized twin.
    import normlab.compat.keras_layers

    config = normlab.LayerNormalization().get_config()
    layer = normlab.LayerNormalization.from_config({**config, "gamma_initializer": None})
    model = keras.Sequential([keras.Input((4,)), layer])
    layer.gamma.assign(np.arange(4, dtype="float32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.layers[-1].gamma), np.arange(4))
    theirs = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, bias_initializer=None),
                               keras.layers.BatchNormalization(moving_variance_initializer=None)])
    ours = normlab.compat.keras_layers.convert(theirs)
    assert type(ours.layers[-1]) is normlab.BatchNormalization
    assert type(normlab.get("ws", layer=keras.layers.Conv2D(4, 3, bias_initializer=None))) is normlab.StdConv2D


def _policy_map(dtype):
    """A DTypePolicyMap giving the layer named "ln" ``dtype`` (float32 elsewhere)."""
    policies = keras.dtype_policies.DTypePolicyMap(default_policy="float32")
    policies["ln"] = dtype
    return policies


@pytest.mark.parametrize("make", [
    lambda d: normlab.LayerNormalization(dtype=d),
    lambda d: normlab.BatchNormalization(dtype=d),
    lambda d: normlab.GroupNormalization(groups=2, dtype=d),
    lambda d: normlab.LocalResponseNormalization(dtype=d),
    lambda d: normlab.AdaptiveInstanceNormalization(dtype=d),
    lambda d: normlab.TLU(dtype=d),
    lambda d: normlab.WeightNormalization(keras.layers.Dense(3), dtype=d),
    lambda d: normlab.SpectralNormalization(keras.layers.Dense(3), dtype=d),
    lambda d: normlab.StdConv2D(3, 3, dtype=d),
    lambda d: normlab.ScaledStdConv2D(3, 3, dtype=d),
    # a map resolves by the layer's path, which Keras sets by the first call at the latest
    lambda d: normlab.LayerNormalization(dtype=_policy_map(d), name="ln")(np.ones((2, 3), "float32")),
], ids=["layer", "batch", "group", "lrn", "adain", "tlu", "weight", "spectral", "std_conv", "scaled_std_conv",
        "policy_map"])
@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_an_integer_dtype_policy_is_refused(make, dtype):
    """Keras' layers take it and truncate every output and moving average: a layer
    norm gave [0, 0, 0, 1, 0, -1, ...]."""
    with pytest.raises(ValueError, match=rf"Invalid `dtype`: expected a float dtype policy.*\(compute dtype {dtype}, "):
        make(dtype)
    make("mixed_bfloat16")


def test_an_integer_dtype_policy_set_after_construction_is_refused_at_build():
    layer = normlab.LayerNormalization()
    layer.dtype_policy = "int32"
    with pytest.raises(ValueError, match=r"Invalid `dtype`: expected a float dtype policy"):
        layer(np.ones((2, 3), "float32"))


@pytest.mark.parametrize("training", ["False", "no", 0.5, 2])
@pytest.mark.parametrize("make", [
    lambda: normlab.BatchNormalization(),
    lambda: normlab.SwitchableNormalization(),
    lambda: normlab.EvoNormB0(),
    lambda: normlab.SpectralNormalization(keras.layers.Dense(3)),
    lambda: normlab.WeightNormalization(keras.layers.Dense(3)),
], ids=["batch", "switchable", "evo_b0", "spectral", "weight"])
def test_training_must_be_a_bool(make, training):
    """training="False" took the batch statistics (a non-empty string is true)."""
    x = np.random.default_rng(0).normal(size=(4, 2, 2, 8)).astype("float32")
    layer = make()
    with pytest.raises(TypeError, match=rf"Invalid `training`: expected None or a bool.*training={training!r}"):
        layer(x, training=training)
    for ok in (None, True, False, np.bool_(True), 1, 0):
        layer(x, training=ok)
