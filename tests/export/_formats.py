"""Each way out of Keras, and the runtime that runs what it wrote.

A :class:`Route` exports a built model and runs the artifact on a batch in
the runtime that serves it, returning the output as NumPy. Export and run
are one step here: a converter that writes a file the runtime then
rejects has not exported the model. Routes run in the process of the
Keras backend under test; :data:`ROUTES` says which backends offer each.

* ``tf_saved_model``, ``onnx``, ``openvino``, ``litert``, ``torch``:
  ``model.export(path, format=...)``, loaded with ``tf.saved_model.load``,
  onnxruntime, the OpenVINO runtime (CPU, ``INFERENCE_PRECISION_HINT=f32``:
  on CPUs with bf16 units OpenVINO otherwise computes in bf16), the LiteRT
  interpreter (``ai_edge_litert``; the converter restricted to TFLite's
  builtin ops, which is what the runtime on a phone has) and
  ``torch.export.load``.
* ``onnx+openvino`` (JAX): the ONNX file read by the OpenVINO runtime, the
  way around Keras' OpenVINO export on JAX, which fails for every model.
* ``torch.export``: ``torch.export.export(model, (x,))`` on the model itself.
* ``jax.export``: ``jax.export.export(jax.jit(model))`` with a symbolic
  batch size, serialized and deserialized, then called.

On torch, Keras replaces an unknown batch size by 1 when it exports
(ONNX, OpenVINO, LiteRT, ExportedProgram); the routes there pass the batch
size the test uses. Elsewhere the batch size stays unknown in the artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import warnings
from typing import Callable

import keras
import numpy as np
import pytest

from tests.export import _cases

BACKEND = keras.backend.backend()


@dataclasses.dataclass(frozen=True)
class Route:
    """An export format (or direct exporter) and the runtime for its artifact."""

    id: str
    backends: tuple[str, ...]
    run: Callable[[keras.Model, np.ndarray, str], np.ndarray]
    #: backend (or "*" for every one) -> (module, what needs it): the test
    #: skips when one is missing.
    requires: dict = dataclasses.field(default_factory=dict)

    def _requirements(self):
        return self.requires.get("*", ()) + self.requires.get(BACKEND, ())

    def missing(self) -> str | None:
        """Why this route cannot run on this machine, or None (without importing anything)."""
        for module, what in self._requirements():
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed: {what}"
        return None

    def require(self) -> None:
        """Skips the calling test, with the reason, unless every module the route needs is installed.

        Looked up, not imported (as ``pytest.importorskip`` would): importing litert_torch turns
        on ``jax_enable_x64`` for the whole process; Keras' exporter imports it inside a guard."""
        missing = self.missing()
        if missing:
            pytest.skip(missing)


def _signature():
    """The input signature handed to ``model.export``: None (Keras infers an
    unknown batch size) except on torch, whose exporters need a fixed one."""
    if BACKEND != "torch":
        return None
    return [keras.InputSpec(shape=(_cases.BATCH,) + _cases.INPUT_SHAPE, dtype="float32", name="images")]


def _tf_saved_model(model, x, workdir):
    import tensorflow as tf

    path = os.path.join(workdir, "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(path)  # keep a reference: `serve` needs the loaded variables alive
    return np.asarray(loaded.serve(tf.constant(x)))


@contextlib.contextmanager
def _quiet_tracer():
    """Silences torch.jit's TracerWarnings: Keras uses TorchScript tracing (for ONNX when the
    dynamo exporter fails, for OpenVINO always), which warns about every constant it records."""
    with warnings.catch_warnings():
        if BACKEND == "torch":
            import torch

            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _onnx(model, x, workdir):
    import onnxruntime

    path = os.path.join(workdir, "model.onnx")
    with _quiet_tracer():
        model.export(path, format="onnx", verbose=False, input_signature=_signature())
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: jax2onnx leaves unused initializers, which it warns about
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _openvino(model, x, workdir):
    import openvino

    path = os.path.join(workdir, "model.xml")
    with _quiet_tracer():
        model.export(path, format="openvino", verbose=False, input_signature=_signature())
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0])


def _onnx_openvino(model, x, workdir):
    import openvino

    path = os.path.join(workdir, "model.onnx")
    with _quiet_tracer():
        model.export(path, format="onnx", verbose=False, input_signature=_signature())
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0])


def _litert(model, x, workdir):
    from ai_edge_litert.interpreter import Interpreter

    path = os.path.join(workdir, "model.tflite")
    options = {}
    if BACKEND == "tensorflow":  # Keras' default adds SELECT_TF_OPS, which needs the Flex delegate
        import tensorflow as tf

        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    model.export(path, format="litert", verbose=False, input_signature=_signature(), **options)
    interpreter = Interpreter(model_path=path)
    (entry,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _torch_format(model, x, workdir):
    import torch

    path = os.path.join(workdir, "model.pt2")
    model.export(path, format="torch", verbose=False, input_signature=_signature())
    with torch.no_grad():  # (the input on Keras' device, the program's: a GPU's where there is one)
        return keras.ops.convert_to_numpy(torch.export.load(path).module()(keras.ops.convert_to_tensor(x)))


def _torch_export(model, x, workdir):
    import torch

    program = torch.export.export(model, (keras.ops.convert_to_tensor(x),))
    with torch.no_grad():
        return keras.ops.convert_to_numpy(program.module()(keras.ops.convert_to_tensor(x)))


def _jax_export(model, x, workdir):
    import jax

    def serve(images):
        return model(images, training=False)

    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch,) + _cases.INPUT_SHAPE, np.float32)
    exported = jax.export.deserialize(jax.export.export(jax.jit(serve))(spec).serialize())
    return np.asarray(exported.call(x))


_TF = ("tensorflow", "Keras writes the SavedModel with TensorFlow")

ROUTES = (
    Route("tf_saved_model", ("tensorflow", "jax", "torch"), _tf_saved_model, {
        "*": (_TF,),
        "torch": (("torch_xla", "Keras exports a torch model to SavedModel through torch_xla"),),
    }),
    Route("onnx", ("tensorflow", "jax", "torch"), _onnx, {
        "*": (("onnxruntime", "the runtime"),),
        "tensorflow": (("tf2onnx", "Keras' ONNX exporter on TensorFlow"),),
        "jax": (("jax2onnx", "Keras' ONNX exporter on JAX"),),
        "torch": (("onnxscript", "torch.onnx's exporter"),),
    }),
    Route("openvino", ("tensorflow", "jax", "torch"), _openvino, {
        "*": (("openvino", "the converter and the runtime"),),
        "jax": (("tensorflow", "Keras converts a JAX model for OpenVINO through jax2tf"),),
    }),
    # Not a Keras format: the way around the openvino route on JAX (see _known.ROUTE_FAILURES).
    Route("onnx+openvino", ("jax",), _onnx_openvino, {
        "jax": (("jax2onnx", "Keras' ONNX exporter on JAX"), ("openvino", "the runtime")),
    }),
    Route("litert", ("tensorflow", "torch"), _litert, {
        "*": (("ai_edge_litert", "the LiteRT interpreter"),),
        "tensorflow": (_TF,),
        "torch": (("litert_torch", "Keras' LiteRT exporter on torch"),),
    }),
    Route("torch", ("torch",), _torch_format),
    Route("torch.export", ("torch",), _torch_export),
    Route("jax.export", ("jax",), _jax_export, {
        "jax": (("flatbuffers", "jax.export's serialization"),),
    }),
)
BY_ID = {route.id: route for route in ROUTES}
