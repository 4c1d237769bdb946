"""Building norms from spec strings, and the errors for bad specs."""

import keras
import pytest

import normlab
from normlab.registry import names, parse_spec


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ("group(groups=8)", normlab.GroupNormalization, {"groups": 8, "axis": -1}),
        ("gn(groups=5, axis=3)", normlab.GroupNormalization, {"groups": 5, "axis": 3}),
        ("instance", normlab.InstanceNormalization, {"axis": -1}),
        ("layer(axis=[1, 2, 3])", normlab.LayerNormalization, {"axis": [1, 2, 3]}),
        ("BN(momentum=0.9)", normlab.BatchNormalization, {"momentum": 0.9}),
        ("none", keras.layers.Identity, {}),
    ],
)
def test_get_builds_configured_layers(spec, cls, attrs):
    layer = normlab.get(spec)
    assert type(layer) is cls
    for key, value in attrs.items():
        assert getattr(layer, key) == value


def test_get_returns_a_new_layer_each_time_and_overrides_win():
    a, b = normlab.get("group(groups=4)"), normlab.get("group(groups=4)", groups=2)
    assert a is not b and b.groups == 2


def test_registry_lists_names_aliases_and_arguments():
    entries = normlab.registry()
    assert {"group", "instance", "layer", "batch", "none"} <= set(entries)
    assert "gn" in entries["group"].aliases
    assert entries["group"].arguments()["groups"] == 32
    assert entries["batch"].arguments()["momentum"] == 0.99


def test_every_entry_has_a_kind_and_register_checks_it():
    kinds = {name: entry.kind for name, entry in normlab.registry().items()}
    assert {n for n, k in kinds.items() if k == "kernel"} == {"weight_norm", "spectral_norm", "weight_std",
                                                               "scaled_weight_std"}
    assert {n for n, k in kinds.items() if k == "two-input"} == {"adain"}
    assert set(kinds.values()) == {"activation", "kernel", "two-input"}
    with pytest.raises(ValueError, match=r"Invalid `kind`: expected one of 'activation', 'kernel', 'two-input'\. "
                                         r"Received: kind='wrapper'"):
        normlab.register("kindtest", normlab.LayerNormalization, kind="wrapper")
    assert "kindtest" not in normlab.registry()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown norm 'gruop'.*Did you mean 'group'.*Valid names: .*batch.*group"):
        normlab.get("gruop(groups=2)")


def test_unknown_argument_lists_valid_arguments():
    with pytest.raises(ValueError, match=r"'group' has no argument 'group'\. Received: spec='group\(group=2\)'\. Did you mean 'groups'\? "
                                         r"Valid arguments: groups, axis"):
        normlab.get("group(group=2)")


@pytest.mark.parametrize("spec", ["group(2)", "group(groups=x)", "group(", "1 + 2", "",
                                  "group(groups={[1]: 2})", "group(groups={1, [2]})"])
def test_malformed_specs(spec):
    # the last two are literals Python cannot build (an unhashable key): a TypeError leaked
    with pytest.raises(ValueError, match=r"Invalid `spec`"):
        parse_spec(spec)


def test_argument_values_are_validated_by_the_layer():
    with pytest.raises(ValueError, match=r"Received: groups=0"):
        normlab.get("group(groups=0)")


def test_register_refuses_to_shadow_another_norm():
    with pytest.raises(ValueError, match=r"already registered for 'group'"):
        normlab.register("gn", normlab.LayerNormalization)
    assert "gn" in names()


@pytest.mark.parametrize("name, aliases", [("MyNorm", ()), ("my-norm", ()), ("mine", ("Mine",))])
def test_register_refuses_names_a_spec_cannot_spell(name, aliases):
    # get() lowercases a spec's name: "MyNorm" was listed by names() but never found.
    with pytest.raises(ValueError, match=r"Invalid `name`: expected a lowercase Python identifier"):
        normlab.register(name, normlab.LayerNormalization, aliases=aliases)
    assert name not in names() and "mine" not in names()


def test_a_norm_without_arguments_says_so():
    with pytest.raises(ValueError, match=r"'none' has no argument 'foo'\. Received: spec='none\(foo=1\)'\. "
                                         r"'none' takes no arguments: write 'none'\."):
        normlab.get("none(foo=1)")


def test_every_listed_name_is_a_spec_get_reads():
    """'in' (instance norm's alias) is a Python keyword: the spec's parse failed on it."""
    for name in names():
        assert parse_spec(name)[0] == parse_spec(f"{name}()")[0] in normlab.registry()
    assert type(normlab.get("in(epsilon=1e-3)")) is normlab.InstanceNormalization


def test_every_keras_layer_argument_passes_and_a_typo_is_named_where_it_was_given():
    layer = normlab.get("group(groups=2, activity_regularizer='l2')", autocast=False)
    assert layer.activity_regularizer is not None and not layer.autocast
    with pytest.raises(ValueError, match=r"'group' has no argument 'grops'\. Received: spec='group\(groups=2\)' "
                                         r"and grops=4 \(keyword arguments\)\. Did you mean 'groups'\?"):
        normlab.get("group(groups=2)", grops=4)
    with pytest.raises(ValueError, match=r"Received: spec='group\(grops=2\)'\. Did you mean 'groups'\?"):
        normlab.get("group(grops=2)")


def test_an_argument_given_twice_is_an_error_not_the_last_value():
    with pytest.raises(ValueError, match=r"Invalid `spec`: expected each argument at most once\. "
                                         r"Received: spec='group\(groups=2, groups=5\)', which gives 'groups'"):
        normlab.get("group(groups=2, groups=5)")


def test_one_version_source():
    import importlib.metadata

    assert normlab.__version__ == importlib.metadata.version("normlab")


def test_re_registering_drops_the_aliases_it_no_longer_lists():
    """The old aliases kept pointing at the name, so they built the new factory."""
    normlab.register("mine", normlab.LayerNormalization, aliases=("my_ln",))
    normlab.register("mine", normlab.RMSNormalization, aliases=("my_rms",))
    assert "my_ln" not in names() and "my_rms" in names()
    with pytest.raises(ValueError):
        normlab.get("my_ln")
    normlab.register("other", normlab.LayerNormalization, aliases=("my_ln",))  # free again


def test_register_refuses_a_factory_that_is_not_callable_and_a_string_of_aliases():
    """None was registered and failed later in get(); aliases="mn" registered 'm' and 'n'."""
    with pytest.raises(TypeError, match=r"Invalid `factory`: expected a callable.*Received: factory=None"):
        normlab.register("zzz_none", None)
    with pytest.raises(TypeError, match=r"Invalid `aliases`: expected a list of names.*Pass aliases=\['mn'\]"):
        normlab.register("zzz_letters", normlab.GroupNormalization, aliases="mn")
    assert "zzz_none" not in names() and "m" not in names()


class _ForwardingBatchNorm(normlab.BatchNormalization):
    """A subclass that names none of its arguments, forwarding them all."""

    def __init__(self, **kwargs):
        super().__init__(**{"momentum": 0.9, **kwargs})


def _group8(**kwargs):
    """Group norm with 8 groups unless told otherwise."""
    return normlab.GroupNormalization(**{"groups": 8, **kwargs})


def test_factories_that_forward_keyword_arguments_take_them_from_specs():
    """A subclass whose __init__ forwards **kwargs, and a function with
    **kwargs, were refused every argument ('takes no arguments')."""
    normlab.register("zzz_bn", _ForwardingBatchNorm)
    normlab.register("zzz_group8", _group8)
    assert normlab.get("zzz_bn(epsilon=1e-5)").epsilon == 1e-5
    arguments = normlab.registry()["zzz_bn"].arguments()
    assert arguments["epsilon"] == 1e-3 and arguments["momentum"] == 0.99  # the base class's signature
    with pytest.raises(ValueError, match=r"'zzz_bn' has no argument 'epsilom'.*Did you mean 'epsilon'"):
        normlab.get("zzz_bn(epsilom=1e-5)")  # the base classes' arguments are known: a typo is still named
    layer = normlab.get("zzz_group8(epsilon=1e-5)", axis=1)
    assert (layer.groups, layer.epsilon, layer.axis) == (8, 1e-5, 1)
    assert normlab.registry()["zzz_group8"].takes_any_argument()
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments .*'epsilom'"):
        normlab.get("zzz_group8(epsilom=1e-5)")  # a function's **kwargs: the layer it builds checks them


def test_a_function_factory_gets_no_keras_layer_arguments_it_does_not_name():
    """Keras' Layer arguments (name, dtype, ...) were let through to any factory,
    one without them failing with Python's bare TypeError."""
    normlab.register("zzz_fixed", lambda axis=-1: normlab.LayerNormalization(axis=axis))
    with pytest.raises(ValueError, match=r"'zzz_fixed' has no argument 'name'\. .*Valid arguments: axis\."):
        normlab.get("zzz_fixed(name='x')")
    assert normlab.get("zzz_fixed(axis=1)").axis == 1
    assert normlab.get("group(groups=2, name='g')").name == "g"  # a layer class takes them


def test_a_partial_factory_reports_its_bound_defaults():
    import functools

    from normlab.registry import Entry

    entry = Entry("x", functools.partial(normlab.RMSNormalization, epsilon=1e-6))
    assert entry.arguments()["epsilon"] == 1e-6 and not entry.takes_any_argument()


def test_a_partial_factorys_summary_is_its_callees_first_docstring_line():
    """It was functools.partial's own: 'partial(func, *args, **keywords) - new function ...'."""
    import functools

    normlab.register("zzz_partial", functools.partial(functools.partial(normlab.RMSNormalization), epsilon=1e-6))
    assert normlab.registry()["zzz_partial"].summary == normlab.RMSNormalization.__doc__.strip().splitlines()[0]


def test_instance_norm_takes_tf_addons_groups_in_a_spec():
    """InstanceNormalization(groups=-1) is TF Addons code; its spec was refused."""
    assert normlab.registry()["instance"].arguments()["groups"] == -1
    assert type(normlab.get("in(groups=-1)")) is normlab.InstanceNormalization


@pytest.mark.parametrize("kwargs, match", [
    (dict(summary=3), r"Invalid `summary`: expected a string.*Received: summary=3 of type int"),
    (dict(aliases=None), r"Invalid `aliases`: expected a list or tuple of names\. Received: aliases=None"),
    (dict(aliases={"a": 1}), r"Invalid `aliases`: expected a list or tuple.*of type dict"),
])
def test_register_refuses_bad_summary_and_aliases(kwargs, match):
    """summary=3 registered, then `normlab list norms` failed on it; aliases=None raised a bare TypeError."""
    with pytest.raises(TypeError, match=match):
        normlab.register("zzz_bad", normlab.RMSNormalization, **kwargs)
    assert "zzz_bad" not in names()


def test_register_refuses_a_factory_without_a_signature():
    """dict registered, then get() failed with inspect's 'no signature found'."""
    with pytest.raises(TypeError, match=r"Invalid `factory`: expected a callable with a signature.*factory=<class 'dict'>"):
        normlab.register("zzz_dict", dict)
    assert "zzz_dict" not in names()


def test_a_factory_that_returns_no_layer_is_named():
    normlab.register("zzz_list", lambda **kwargs: [kwargs])
    with pytest.raises(TypeError, match=r"Invalid `factory` of 'zzz_list': expected it to return a Keras layer\. "
                                        r"Received: \[\{\}\] of type list"):
        normlab.get("zzz_list")
