"""Runs saved ``.keras`` models on the Keras backend this process was started with.

``python -m tests.export._backend_worker DIR`` (with ``KERAS_BACKEND`` set)
reads ``DIR/manifest.json`` and ``DIR/inputs.npy``, loads ``DIR/combined.keras``
and runs it in inference mode; if that fails, it loads and runs each case's
own ``DIR/<case>.keras`` instead, so that each case reports its own error.
It writes ``DIR/<backend>.npz`` (one output per case) and
``DIR/<backend>.json`` (``{"combined_error": ..., "errors": {case: ...}}``).

The model is called directly rather than through ``predict``: on the
OpenVINO backend, Keras 3.15 compiles ``predict``'s graph without an
inference precision, and on CPUs with bf16 units OpenVINO then computes in
bf16 (differences near 1e-2); a direct call is read back in float32.
"""

from __future__ import annotations

import json
import pathlib
import sys

import keras
import numpy as np

import normlab  # noqa: F401  (registers the layers for loading)


def _run(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(path)
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)}


def main(directory: str) -> int:
    root = pathlib.Path(directory)
    manifest = json.loads((root / "manifest.json").read_text())
    x = np.load(root / "inputs.npy")
    backend = keras.backend.backend()
    outputs: dict[str, np.ndarray] = {}
    report: dict[str, object] = {"combined_error": None, "errors": {}}
    cases, size = manifest["combined"], manifest["branch_size"]
    try:
        y = _run(root / "combined.keras", x)
        outputs = {case: y[:, i * size:(i + 1) * size] for i, case in enumerate(cases)}
    except Exception as exc:  # each case on its own then
        report["combined_error"] = _error(exc)
    for case in manifest["cases"]:
        if case in outputs:
            continue
        try:
            outputs[case] = _run(root / f"{case}.keras", x)
        except Exception as exc:
            report["errors"][case] = _error(exc)
    np.savez(root / f"{backend}.npz", **outputs)
    (root / f"{backend}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
