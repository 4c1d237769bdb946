"""Every docstring example in normlab runs, on every backend: examples are tests."""

import ast
import doctest
import importlib
import inspect
import pkgutil
import re

import keras
import pytest

import normlab
from tests._optional import skip_if_missing

BACKENDS = {"tensorflow", "jax", "torch"}


def _modules():
    for info in pkgutil.walk_packages(normlab.__path__, prefix="normlab."):
        leaf = info.name.rsplit(".", 1)[-1]
        if info.name.startswith("normlab.backends.") and leaf in BACKENDS and leaf != keras.backend.backend():
            continue  # another backend's fast paths import that backend
        yield info.name


MODULES = sorted(_modules())


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        skip_if_missing(exc, name)
        raise
    # With empty globals: an example runs as a user who copies it runs it, its imports included.
    result = doctest.testmod(module, globs={}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"


def test_every_layer_documents_formula_args_example_and_reference():
    for name in normlab.layers.__all__:
        cls = getattr(normlab.layers, name)
        if name == "Normalization":
            continue
        doc = cls.__doc__ or ""
        for section in ("Args:", "Example:", ">>>", "Reference:"):
            assert section in doc, f"{name}'s docstring has no {section!r}"


def _documented_defaults(doc: str) -> dict[str, str]:
    """``{argument: text after "Default"}`` from a Google-style ``Args:`` section."""
    section = re.search(r"\n\s*Args:\n(.*?)(?:\n\s*\n\s*[A-Z][a-z]+:|\Z)", "\n" + doc, re.S)
    found = {}
    for entry in re.split(r"\n(?=\*{0,2}\w+:)", inspect.cleandoc(section.group(1)) if section else ""):
        match = re.match(r"\s*(\w+):(.*)", entry, re.S)
        default = match and re.search(r"Default:? (\S+)", " ".join(match.group(2).split()))
        if default:  # its first word: "-1; 1 for channels-first", "None (ones)", "1e-6."
            found[match.group(1)] = default.group(1).strip("`").rstrip(".,;:")
    return found


@pytest.mark.parametrize("name", sorted(normlab.ops.__all__))
def test_ops_document_their_defaults_as_they_are(name):
    """A default changed in the signature but not in the docstring (or the
    other way round) is caught: ``normalize``'s epsilon or ``group_norm``'s
    groups could change with every test passing."""
    fn = getattr(normlab.ops, name)
    if not inspect.isfunction(fn):
        pytest.skip("not a function")
    documented = _documented_defaults(inspect.getdoc(fn) or "")
    for argument, parameter in inspect.signature(fn).parameters.items():
        if parameter.default is inspect.Parameter.empty or parameter.kind is parameter.VAR_KEYWORD:
            continue
        assert argument in documented, f"{name}: the docstring gives no default for {argument!r}"
        text = documented[argument]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        assert value == parameter.default, f"{name}({argument}=...): the docstring says {text!r}, " \
                                           f"the signature {parameter.default!r}"


# The layers whose Args sections give each argument its own entry (EvoNorm's group several in one).
DOCUMENTED_LAYERS = sorted(
    ["AdaptiveInstanceNormalization", "DynamicTanh", "FilterResponseNormalization", "LocalResponseNormalization"]
    + ["ScaledStdConv1D", "ScaledStdConv2D", "ScaledStdConv3D", "StdConv1D", "StdConv2D", "StdConv3D"]
    + ["SpectralNormalization", "SwitchableNormalization", "TLU", "WeightNormalization"]
)


@pytest.mark.parametrize("name", DOCUMENTED_LAYERS)
def test_layers_document_their_defaults_as_they_are(name):
    """As for the ops: a layer's documented defaults ("momentum: ... Default
    0.99.") are its constructor's, so neither can change alone."""
    cls = getattr(normlab.layers, name)
    doc = re.split(r"\n\s*Call arguments:", inspect.getdoc(cls) or "")[0]  # a section the Args' parser runs into
    documented = _documented_defaults(doc)
    for argument, parameter in inspect.signature(cls.__init__).parameters.items():
        if argument == "self" or parameter.default is inspect.Parameter.empty:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            continue
        assert argument in documented, f"{name}: the docstring gives no default for {argument!r}"
        try:
            value = ast.literal_eval(documented[argument])
        except (ValueError, SyntaxError):
            value = documented[argument]
        assert value == parameter.default, f"{name}({argument}=...): documented {value!r}, not {parameter.default!r}"
