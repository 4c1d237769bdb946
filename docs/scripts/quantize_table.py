"""Writes the full-integer quantization table into docs/deploying.md.

Each layer sits in the export matrix's small conv model (``Input(8, 8, 3) ->
Conv2D(8, 3) -> norm -> Flatten``, weights seeded), exported on TensorFlow to
LiteRT with TFLite's int8 builtins only (``Optimize.DEFAULT``, a
representative dataset of 64 inputs, int8 input and output), three ways:
normlab's layer as it is, normlab's layer exported inside
``normlab.backends.disabled()``, and Keras' own layer where Keras has one.
The error is the largest absolute difference from the float model on 64 other
inputs, relative to the float output's largest magnitude.

A second table takes the layers whose statistics are computed at inference
through inputs about larger offsets (:data:`OFFSETS`).

    KERAS_BACKEND=tensorflow python docs/scripts/quantize_table.py           # print the tables
    KERAS_BACKEND=tensorflow python docs/scripts/quantize_table.py --write   # ... into docs/deploying.md

About a minute on 2 cores. The tables go between the markers
``<!-- quantize-table -->`` and ``<!-- /quantize-table -->``, and
``<!-- quantize-offsets -->`` and ``<!-- /quantize-offsets -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import normlab  # noqa: E402

PAGE = Path(__file__).resolve().parents[2] / "docs" / "deploying.md"
_REGIONS = {name: re.compile(rf"(<!-- {name} -->\n)(.*?)(<!-- /{name} -->)", re.S)
            for name in ("quantize-table", "quantize-offsets")}

#: (row label, normlab's layer, Keras' layer or None)
CASES: list[tuple[str, Callable[[], keras.layers.Layer], Callable[[], keras.layers.Layer] | None]] = [
    ("`GroupNormalization(groups=4)`", lambda: normlab.GroupNormalization(groups=4),
     lambda: keras.layers.GroupNormalization(groups=4)),
    ("`InstanceNormalization()`", lambda: normlab.InstanceNormalization(),
     lambda: keras.layers.GroupNormalization(groups=-1)),
    ("`LayerNormalization()`", lambda: normlab.LayerNormalization(), lambda: keras.layers.LayerNormalization()),
    ("`LayerNormalization(axis=[1, 2, 3])`", lambda: normlab.LayerNormalization(axis=[1, 2, 3]),
     lambda: keras.layers.LayerNormalization(axis=[1, 2, 3])),
    ("`BatchNormalization()`", lambda: normlab.BatchNormalization(), lambda: keras.layers.BatchNormalization()),
    ("`RMSNormalization()`", lambda: normlab.RMSNormalization(), lambda: keras.layers.RMSNormalization()),
    ("`FilterResponseNormalization()`", lambda: normlab.FilterResponseNormalization(), None),
]


#: The offsets of the second table (``--offsets``): activations far from zero.
OFFSETS = (20.0, 1000.0, 1e4)

#: Its rows: the layers whose statistics are computed at inference.
OFFSET_CASES = CASES[:4]


def inputs(seed: int, batch: int = 64, offset: float = 0.5) -> np.ndarray:
    """The matrix's input distribution: an offset and a spread of 2, float32."""
    return np.random.default_rng(seed).normal(offset, 2.0, size=(batch, 8, 8, 3)).astype("float32")


def model_with(norm: keras.layers.Layer) -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(8, 3)
    return keras.Model(x, keras.layers.Flatten()(norm(conv(x))))


def run_int8(path: str, x: np.ndarray) -> np.ndarray:
    """Runs a full-integer LiteRT model, quantizing ``x`` and dequantizing the output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    (entry,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    scale, zero = entry["quantization"]
    interpreter.set_tensor(entry["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    return (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale


def int8_error(model: keras.Model, workdir: str, fast_paths: bool = True, offset: float = 0.5) -> float:
    """The relative error of ``model`` exported to full-integer LiteRT (see the
    module docstring), its inputs about ``offset``."""
    import tensorflow as tf

    calibration, test = inputs(1, offset=offset), inputs(2, offset=offset)
    path = os.path.join(workdir, "model.tflite")
    scope = contextlib.nullcontext() if fast_paths else normlab.backends.disabled()
    with scope:
        model.export(path, format="litert", verbose=False,
                     input_signature=[keras.InputSpec(shape=(None, 8, 8, 3), dtype="float32")],
                     optimizations=[tf.lite.Optimize.DEFAULT],
                     representative_dataset=lambda: ([calibration[i:i + 1]] for i in range(len(calibration))),
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                     inference_input_type=tf.int8, inference_output_type=tf.int8)
    expected = np.asarray(model(test, training=False))
    return float(np.max(np.abs(run_int8(path, test) - expected)) / np.max(np.abs(expected)))


def render(rows: list[tuple[str, float, float, float | None]]) -> str:
    def cell(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    out = ["| layer | normlab | normlab, exported in `disabled()` | Keras' layer |", "|---|---|---|---|"]
    out += [f"| {label} | {cell(fast)} | {cell(general)} | {cell(theirs)} |" for label, fast, general, theirs in rows]
    import tensorflow as tf

    out += ["", f"Measured with keras {keras.__version__}, tensorflow {tf.__version__} "
                f"(`docs/scripts/quantize_table.py`)."]
    return "\n".join(out) + "\n"


def measure(cases=CASES, offset: float = 0.5) -> list[tuple[str, float, float, float | None]]:
    """One row per case: its label (with ``offset`` where it is not the
    first table's) and the three errors."""
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for label, ours, theirs in cases:
            fast = int8_error(model_with(ours()), workdir, offset=offset)
            general = int8_error(model_with(ours()), workdir, fast_paths=False, offset=offset)
            reference = None if theirs is None else int8_error(model_with(theirs()), workdir, offset=offset)
            label = label if offset == 0.5 else f"{label}, offset {offset:g}"
            print(f"{label}: {fast:.4f} {general:.4f} {reference}", file=sys.stderr, flush=True)
            rows.append((label, fast, general, reference))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the tables into docs/deploying.md")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        parser.error("Keras' LiteRT quantization runs on TensorFlow: set KERAS_BACKEND=tensorflow")
    tables = {"quantize-table": render(measure()),
              "quantize-offsets": render([row for offset in OFFSETS for row in measure(OFFSET_CASES, offset)])}
    if not args.write:
        print("\n".join(tables.values()), end="")
        return 0
    text = PAGE.read_text(encoding="utf-8")
    for name, table in tables.items():
        match = _REGIONS[name].search(text)
        if match is None:
            raise SystemExit(f"{PAGE}: no <!-- {name} --> ... <!-- /{name} --> markers")
        text = text[:match.start(2)] + table + text[match.end(2):]
    PAGE.write_text(text, encoding="utf-8")
    print("docs/deploying.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
