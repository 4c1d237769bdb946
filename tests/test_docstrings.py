"""Every docstring example in normlab runs, on every backend: examples are tests."""

import doctest
import importlib
import pkgutil

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
