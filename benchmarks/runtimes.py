"""Exported models in deployment runtimes: normlab's layer against Keras',
each exported from the backend ``KERAS_BACKEND`` names (a symbolic batch, as
``model.export`` writes by default) and run in onnxruntime and, where Keras
exports to it, OpenVINO, both on one thread.

    KERAS_BACKEND=torch python benchmarks/runtimes.py            # every case, 15 rounds
    KERAS_BACKEND=tensorflow python benchmarks/runtimes.py --cases GN,LN
    KERAS_BACKEND=jax python benchmarks/runtimes.py --quick      # small shapes, 3 rounds (checks the script)

Per case and runtime it prints the medians in microseconds over interleaved
rounds (``normbench.timing.time_rounds``), Keras' time over normlab's (above
1: normlab faster), and each artifact's largest error against its eager
layer computed in float64 (the same layer, its weights in float64) on
inputs at an offset of 1e4 (relative to the output's largest magnitude; the
float32 input itself is exact). A layer whose export
or load fails shows the error's type instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from normbench import stats  # noqa: E402
from normbench.timing import rounds_argument, time_rounds  # noqa: E402

import normlab  # noqa: E402

#: name -> (shape, quick shape, normlab's layer, Keras' layer); BN runs in inference (its moving statistics).
CASES = {
    "GN": ((1, 56, 56, 64), (1, 8, 8, 64), lambda **k: normlab.layers.GroupNormalization(32, **k),
           lambda **k: keras.layers.GroupNormalization(32, **k)),
    "GN-NCHW": ((1, 64, 56, 56), (1, 64, 8, 8), lambda **k: normlab.layers.GroupNormalization(32, axis=1, **k),
                lambda **k: keras.layers.GroupNormalization(32, axis=1, **k)),
    "IN": ((1, 56, 56, 64), (1, 8, 8, 16), lambda **k: normlab.layers.InstanceNormalization(**k),
           lambda **k: keras.layers.GroupNormalization(-1, **k)),
    "LN": ((1, 128, 768), (1, 8, 32), lambda **k: normlab.layers.LayerNormalization(**k),
           lambda **k: keras.layers.LayerNormalization(**k)),
    "RMS": ((1, 128, 768), (1, 8, 32), lambda **k: normlab.layers.RMSNormalization(**k),
            lambda **k: keras.layers.RMSNormalization(**k)),
    "BN": ((1, 56, 56, 64), (1, 8, 8, 16), lambda **k: normlab.layers.BatchNormalization(**k),
           lambda **k: keras.layers.BatchNormalization(**k)),
}
OFFSET = 1e4


def _model(make, shape, dtype="float32", like=None):
    """A model of one layer on a symbolic batch, built, with non-trivial
    weights (drawn alike for both layers), or those of ``like``."""
    inputs = keras.Input(shape[1:], dtype=dtype)
    layer = make(dtype=dtype)
    model = keras.Model(inputs, layer(inputs))
    model(np.zeros(shape, dtype))
    if like is not None:
        model.set_weights([np.asarray(w, dtype) for w in like.get_weights()])
        return model
    rng = np.random.default_rng(1)
    for weight in layer.weights:
        positive = any(k in weight.path for k in ("variance", "gamma", "scale"))
        value = rng.uniform(0.5, 1.5, weight.shape) if positive else rng.normal(0.0, 0.5, weight.shape)
        weight.assign(value.astype(weight.dtype))
    return model


def _float64():
    """A block where float64 is float64 (JAX computes in float32 unless x64 is on)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _onnxruntime(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path):
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer([x])[0]


def runtimes() -> dict:
    """``{name: (format, file suffix, loader)}`` of the runtimes installed that Keras exports to from this backend."""
    found = {}
    if importlib.util.find_spec("onnxruntime"):
        found["onnxruntime"] = ("onnx", ".onnx", _onnxruntime)
    if importlib.util.find_spec("openvino") and keras.backend.backend() != "jax":
        found["openvino"] = ("openvino", ".xml", _openvino)
    return found


@contextlib.contextmanager
def _silenced():
    """Standard output and error go nowhere, at the file descriptors (torch's
    exporter writes the graph it fails on from C++; jax2onnx and the tracer warn)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _export(model, fmt, path):
    with _silenced():
        model.export(path, format=fmt, verbose=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 rounds")
    parser.add_argument("--rounds", type=rounds_argument, default=None, help="rounds (default 15, 3 with --quick)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown or not names:
        parser.error(f"--cases {args.cases!r}: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(CASES)}")
    rounds = args.rounds or (3 if args.quick else 15)
    found = runtimes()
    print(f"{keras.backend.backend()}: exported with a symbolic batch, one thread; medians of {rounds} rounds, us; "
          f"err: against the layer in float64 at an offset of {OFFSET:g}, over the output's largest magnitude "
          "('ref nan': that float64 output is itself NaN there, as Keras' GroupNormalization's on torch)")
    print(f"{'case':8} {'shape':18} {'runtime':12} {'normlab':>9} {'keras':>9} {'keras/normlab':>14} "
          f"{'err normlab':>12} {'err keras':>10}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in names:
            full, quick, *makers = CASES[case]
            shape = quick if args.quick else full
            x = np.random.default_rng(0).normal(size=shape).astype("float32")
            models = {who: _model(make, shape) for who, make in zip(("normlab", "keras"), makers)}
            with _float64():
                exact = {who: keras.ops.convert_to_numpy(_model(make, shape, "float64", models[who])(
                    (x + OFFSET).astype("float64"))) for who, make in zip(("normlab", "keras"), makers)}
            for runtime, (fmt, suffix, load) in found.items():
                fns, errors = {}, {}
                for who, model in models.items():
                    path = os.path.join(folder, f"{case}-{who}-{runtime}{suffix}")
                    try:
                        _export(model, fmt, path)
                        run = load(path)
                        want = exact[who]
                        errors[who] = ("ref nan" if not np.isfinite(want).all() else  # no reference to measure by
                                       f"{np.abs(run(x + OFFSET) - want).max() / max(1.0, np.abs(want).max()):.1e}")
                        fns[who] = (lambda run: lambda: run(x))(run)
                    except Exception as error:  # an exporter or runtime that cannot take the layer
                        errors[who] = f"fails: {type(error).__name__}"
                samples, _, _ = time_rounds(fns, rounds, warmup=3, min_sample_s=0.01)
                us = {who: stats.median(v) * 1e6 for who, v in samples.items() if not isinstance(v, Exception)}
                cells = [f"{us[who]:9.0f}" if who in us else f"{'-':>9}" for who in ("normlab", "keras")]
                ratio = f"{us['keras'] / us['normlab']:14.2f}" if len(us) == 2 else f"{'-':>14}"
                print(f"{case:8} {str(shape):18} {runtime:12} {cells[0]} {cells[1]} {ratio} "
                      f"{errors['normlab']:>12} {errors['keras']:>10}", flush=True)
                rows.append({"backend": keras.backend.backend(), "case": case, "shape": list(shape),
                             "runtime": runtime, "us": us, "error": errors})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
