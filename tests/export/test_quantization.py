"""Full-integer (int8) LiteRT quantization on TensorFlow: normlab's group and
layer norm, exported as they are, lose no more than Keras' own layers do
(docs/deploying.md, whose table ``docs/scripts/quantize_table.py`` writes).

The exported graph decides this: normlab's general path, for one, quantizes
group norm three to four times worse than Keras' layer (26.8% against 7.2% of
the output's range), which these tests would report."""

from __future__ import annotations

import importlib.util

import keras
import pytest

from tests.docs._scripts import load_script

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras quantizes for LiteRT on TensorFlow"),
    pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="needs ai-edge-litert"),
]


@pytest.fixture(scope="module")
def table():
    return load_script("quantize_table")


@pytest.mark.parametrize("label", ["`GroupNormalization(groups=4)`", "`LayerNormalization()`",
                                   "`LayerNormalization(axis=[1, 2, 3])`"])
def test_int8_error_within_keras_layers(table, tmp_path, label):
    (ours, theirs), = [(o, t) for name, o, t in table.CASES if name == label]
    error = table.int8_error(table.model_with(ours()), str(tmp_path))
    reference = table.int8_error(table.model_with(theirs()), str(tmp_path))
    # Calibration runs the float model, whose last bits differ between CPUs: a margin, not equality.
    assert error <= 1.5 * reference + 0.01, f"{label}: int8 error {error:.3f}, Keras' layer {reference:.3f}"


def test_render_marks_a_missing_keras_layer(table):
    text = table.render([("`A()`", 0.072, 0.268, 0.072), ("`B()`", 0.162, 0.162, None)])
    assert "| `A()` | 7.2% | 26.8% | 7.2% |" in text
    assert "| `B()` | 16.2% | 16.2% | – |" in text
