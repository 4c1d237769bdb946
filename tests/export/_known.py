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


_EUCLIDEAN_NORM = (
    "normlab's TensorFlow fast path for layer_norm (normlab/backends/tensorflow.py) takes the "
    "variance as EuclideanNorm(x - shift)^2 (tf.math.reduce_euclidean_norm); EuclideanNorm is not a "
    "TFLite builtin op and tf2onnx has no ONNX rule for it. With NORMLAB_FAST_PATHS=0 the cell passes."
)
_WEIGHT_NORM_TF = (
    "WeightNormalization(data_init=True) traces its data-dependent initialization as an ops.cond "
    "branch; the branch calls normlab.ops.moments(..., keepdims=False), whose ops.squeeze over the "
    "batch axis fails when the batch size is unknown (Keras' TensorFlow squeeze needs a static 1). "
    "data_init=False, or wrapper.remove() before export, avoids it."
)
_WEIGHT_NORM_TORCH = (
    "WeightNormalization(data_init=True) decides whether to initialize with ops.cond on its "
    "`initialized` variable; Keras' torch cond is a Python `if` on a tensor, a data-dependent guard "
    "that torch.export rejects. data_init=False, or wrapper.remove() before export, avoids it."
)

_POW_5D = (
    "The grouped statistics run on a 5-D view (N, H, W, G, C/G); litert_torch lowers ops.square there "
    "(aten.square) to tfl.pow, which the TFLite converter rejects on a 5-D tensor. x * x, or the "
    "statistics on a 4-D view (N, H*W, G, C/G), would avoid it."
)

KNOWN: dict[tuple[str, str, str], Known] = {
    # TensorFlow -------------------------------------------------------------
    ("tensorflow", "onnx", "layer"): Known(
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph",
        "No Op registered for EuclideanNorm", _EUCLIDEAN_NORM),
    ("tensorflow", "onnx", "layer-3-axes"): Known(
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph",
        "No Op registered for EuclideanNorm", _EUCLIDEAN_NORM),
    ("tensorflow", "litert", "layer"): Known(
        "tensorflow.lite.python.convert_phase.ConverterError",
        "'tf.EuclideanNorm' op is neither a custom op nor a flex op", _EUCLIDEAN_NORM),
    ("tensorflow", "litert", "layer-3-axes"): Known(
        "tensorflow.lite.python.convert_phase.ConverterError",
        "'tf.EuclideanNorm' op is neither a custom op nor a flex op", _EUCLIDEAN_NORM),
    **{
        ("tensorflow", route, "weight_norm"): Known(
            "builtins.ValueError", "Cannot squeeze axis=0, because the dimension is not 1.", _WEIGHT_NORM_TF)
        for route in ("tf_saved_model", "onnx", "openvino", "litert")
    },
    # JAX --------------------------------------------------------------------
    ("jax", "onnx", "lrn"): Known(
        "builtins.TypeError", "'_DimExpr' object cannot be interpreted as an integer",
        "jax2onnx's rule for jnp.power (jax2onnx/plugins/jax/numpy/pow.py) broadcasts the shapes with "
        "numpy.broadcast_shapes, which cannot take the symbolic batch size; normlab's "
        "local_response_norm raises the window sum to the power beta with ops.power."),
    **{
        ("jax", "onnx+openvino", case): Known(
            "builtins.RuntimeError", "'then' and 'else' branches have to have the same number of outputs",
            "normlab's JAX fast paths choose an exact second pass for outlier slices with lax.cond "
            "(normlab/backends/policy.py); jax2onnx writes it as an ONNX If whose nested branch OpenVINO's ONNX "
            "frontend reads with unequal output counts (onnxruntime runs the same file). With "
            "NORMLAB_FAST_PATHS=0, or the export inside normlab.backends.disabled(), the cell passes.")
        for case in ("group", "instance", "layer", "layer-3-axes")
    },
    ("jax", "onnx+openvino", "lrn"): Known(
        "builtins.TypeError", "'_DimExpr' object cannot be interpreted as an integer",
        "As in the JAX onnx cell: jax2onnx's jnp.power rule cannot take the symbolic batch size."),
    # PyTorch ----------------------------------------------------------------
    ("torch", "torch", "weight_norm"): Known(
        "builtins.RuntimeError", "Failed to export model to PyTorch format", _WEIGHT_NORM_TORCH),
    ("torch", "torch.export", "weight_norm"): Known(
        "torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode",
        "The error above occurred when calling torch.export.export", _WEIGHT_NORM_TORCH),
    ("torch", "litert", "weight_norm"): Known(
        "builtins.RuntimeError", "The error above occurred when calling torch.export.export", _WEIGHT_NORM_TORCH),
    ("torch", "litert", "group"): Known(
        "builtins.RuntimeError", "failed to legalize operation 'tfl.pow' that was explicitly marked illegal", _POW_5D),
    ("torch", "litert", "evonorm_s0"): Known(
        "builtins.RuntimeError", "failed to legalize operation 'tfl.pow' that was explicitly marked illegal", _POW_5D),
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

EXPORTED_ALONE: dict[tuple[str, str], dict[str, str]] = {
    ("torch", "onnx"): {
        "weight_norm": (
            "torch.onnx's dynamo exporter cannot export it (as torch.export, next columns), so Keras falls "
            "back to the TorchScript exporter, which can. In a model that also holds LocalResponseNormalization, "
            "that fallback fails: there the layer's moveaxis(-1, -1) becomes an ONNX Transpose with perm "
            "[0, 1, 2, -1], which onnxruntime rejects."),
    },
}


def known(backend: str, route: str, case: str) -> Known | None:
    return KNOWN.get((backend, route, case))


def route_failure(backend: str, route: str) -> Known | None:
    return ROUTE_FAILURES.get((backend, route))


def exported_alone(backend: str, route: str) -> dict[str, str]:
    return EXPORTED_ALONE.get((backend, route), {})
