"""Keras' openvino backend compiles ``predict``'s graph by calling the model on
placeholder inputs. An uninitialized ``WeightNormalization(data_init=True)``
assigned ``g`` and the bias from those placeholders: each batch then
re-initialized the layer (a sample's output depended on the others in its
batch, 2.5 off), and ``g`` could no longer be read or saved."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import warnings
    import keras, numpy as np, normlab
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2, size=(4, 8, 8, 3)).astype("float32")
    other = rng.normal(5.0, 10, size=(4, 8, 8, 3)).astype("float32")
    wn = normlab.WeightNormalization(keras.layers.Conv2D(5, 3))
    model = keras.Sequential([keras.Input((8, 8, 3)), wn])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = model.predict(x, verbose=0)
    b = model.predict(np.concatenate([x[:1], other[1:]]), verbose=0)
    print("diff", float(np.abs(a[0] - b[0]).max()))
    print("warned", any("placeholder" in str(w.message) for w in caught))
    print("g", keras.ops.convert_to_numpy(wn.g).tolist())
    model(x)  # an eager call initializes it
    print("initialized", bool(keras.ops.convert_to_numpy(wn.initialized)))
""")


@pytest.mark.once  # a subprocess on the openvino backend: the same from every test process
@pytest.mark.slow
def test_weight_norm_first_run_through_openvino_predict():
    pytest.importorskip("openvino")
    env = {**os.environ, "KERAS_BACKEND": "openvino"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert float(lines["diff"]) == 0.0
    assert lines["warned"] == "True"
    assert lines["g"] == "[1.0, 1.0, 1.0, 1.0, 1.0]"  # left as it was
    assert lines["initialized"] == "True"
