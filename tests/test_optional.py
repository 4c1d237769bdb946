"""tests/_optional.py skips only for a missing optional dependency: a missing
module of normlab's own, or a missing part of an installed package, is a
failure to report, never a skip."""

import importlib.util

import pytest

from tests import _optional


@pytest.fixture
def absent(monkeypatch):
    """Makes ``find_spec`` report one top-level module as not installed."""
    real = importlib.util.find_spec

    def set_absent(name):
        monkeypatch.setattr(_optional.importlib.util, "find_spec",
                            lambda n, *a: None if n == name else real(n, *a))
    return set_absent


def test_a_missing_optional_dependency_is_named(absent):
    absent("torch_xla")
    assert _optional.missing(ModuleNotFoundError("no torch_xla", name="torch_xla")) == "torch_xla"
    assert _optional.missing(ModuleNotFoundError("no", name="torch_xla.core")) == "torch_xla"


def test_it_is_found_through_a_chain_of_exceptions(absent):
    absent("flatbuffers")
    try:
        try:
            raise ModuleNotFoundError("no flatbuffers", name="flatbuffers")
        except ModuleNotFoundError as exc:
            raise ImportError("Please install 'flatbuffers'") from exc
    except ImportError as outer:
        assert _optional.missing(outer) == "flatbuffers"


def test_other_missing_modules_are_not_skipped():
    # A module of normlab's own, an unknown package, a missing part of an installed optional package.
    for name in ("normlab.no_such_module", "no_such_package", "jax.no_such_module"):
        assert _optional.missing(ModuleNotFoundError("missing", name=name)) is None
    assert _optional.missing(ValueError("not an import")) is None


def test_skip_if_missing_skips_with_the_reason(absent):
    absent("openvino")
    with pytest.raises(pytest.skip.Exception, match="docs/x.md needs openvino, which is not installed"):
        _optional.skip_if_missing(ModuleNotFoundError("no", name="openvino"), "docs/x.md")
    _optional.skip_if_missing(ModuleNotFoundError("no", name="no_such_package"), "docs/x.md")  # returns
