"""Optional dependencies: a test that needs one skips, with the reason, where it
is not installed (the GPU machine has PyTorch, JAX and Triton but neither
TensorFlow nor the exporters), instead of failing on the import."""

from __future__ import annotations

import importlib.util

import pytest

#: Top-level modules of normlab's optional dependencies (pyproject's extras,
#: and what those import lazily). A missing module outside this set is a
#: bug, never a skip.
OPTIONAL = frozenset({
    "tensorflow", "torch", "jax", "triton", "matplotlib", "rich", "sklearn", "scipy", "ray",
    "onnx", "onnxruntime", "onnxscript", "tf2onnx", "jax2onnx", "openvino", "ai_edge_litert",
    "litert_torch", "torch_xla", "flatbuffers",
})


def missing(exc: BaseException) -> str | None:
    """The optional dependency whose absence raised ``exc`` (also through a
    chain of exceptions, as exporters re-raise it), or None."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            root = exc.name.split(".")[0]
            if root in OPTIONAL and importlib.util.find_spec(root) is None:
                return root
        exc = exc.__cause__ or exc.__context__
    return None


def skip_if_missing(exc: BaseException, what: str) -> None:
    """Skips the running test if ``exc`` comes from an optional dependency that
    is not installed; returns otherwise (the caller re-raises)."""
    name = missing(exc)
    if name is not None:
        pytest.skip(f"{what} needs {name}, which is not installed")
