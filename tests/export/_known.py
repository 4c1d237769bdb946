"""Cells of the export matrix that cannot work today, and why.

Each entry is the converter's (or runtime's) own error: its class and a
fragment of its message, both checked, so the cell is an expected failure
(``xfail(strict=True)``) only while it fails in exactly this way; when the
converter learns the op or the layer stops emitting it, the cell passes,
the strict xfail turns it into a failure, and the entry here must go.

Keyed by ``(backend, route, case)``; :data:`ROUTE_FAILURES` holds routes
that fail for any model on a backend, normlab layers or not (checked on a
model without them), and :data:`EXPORTED_ALONE` the cases that work but,
inside the combined model, would send the whole export down another path.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Known:
    """An expected failure: the error's class (``module.Name``), a fragment of its message, and what blocks it."""

    error: str
    match: str
    blocker: str

    def error_class(self) -> type[BaseException]:
        module, _, name = self.error.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def reason(self) -> str:
        return f"{self.error}: {self.match!r}. {self.blocker}"


KNOWN: dict[tuple[str, str, str], Known] = {
    # JAX --------------------------------------------------------------------
    **{
        ("jax", "onnx+openvino", case): Known(
            "builtins.RuntimeError", "'then' and 'else' branches have to have the same number of outputs",
            "normlab's JAX fast paths choose an exact second pass for outlier slices with lax.cond "
            "(normlab/backends/policy.py); jax2onnx writes it as an ONNX If whose nested branch OpenVINO's ONNX "
            "frontend reads with unequal output counts (onnxruntime runs the same file). Two Ifs in sequence "
            "instead of nested get past this error, but OpenVINO's CPU plugin then returns wrong values (NaN, "
            "or 1e2 off) once a model holds several such Ifs, changing from one compile to the next, so normlab "
            "keeps the form that fails loudly. With NORMLAB_FAST_PATHS=0, or the export inside "
            "normlab.backends.disabled(), the cell passes.")
        for case in ("group", "instance", "layer", "layer-3-axes", "layer-axis-1")
    },
}

ROUTE_FAILURES: dict[tuple[str, str], Known] = {
    ("jax", "openvino"): Known(
        "openvino._pyopenvino.OpConversionFailure",
        "No conversion rule found for operations: XlaCallModule",
        "Keras 3.15 converts a JAX model for OpenVINO through jax2tf with native_serialization=False; "
        "JAX 0.10 ignores that argument (deprecated) and always emits XlaCallModule, which OpenVINO's "
        "TensorFlow frontend cannot read. Any model fails, with or without normlab layers. Workaround: "
        "export to ONNX and read that with OpenVINO."),
}

EXPORTED_ALONE: dict[tuple[str, str], dict[str, str]] = {}


def known(backend: str, route: str, case: str) -> Known | None:
    return KNOWN.get((backend, route, case))


def route_failure(backend: str, route: str) -> Known | None:
    return ROUTE_FAILURES.get((backend, route))


def exported_alone(backend: str, route: str) -> dict[str, str]:
    return EXPORTED_ALONE.get((backend, route), {})
