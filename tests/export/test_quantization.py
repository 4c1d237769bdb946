"""Full-integer (int8) LiteRT quantization on TensorFlow: normlab's group and
layer norm, exported as they are, lose no more than Keras' own layers do
(docs/deploying.md, whose table ``docs/scripts/quantize_table.py`` writes).

The exported graph decides this: a ``tf.cond`` in it, or a maximum of
samples of ``x``, quantized group and layer norm 100% to 200% off where
Keras' layers are 1.4% to 17% off (at offsets of 50 and 1000), and the
general path's median of samples by maximum and minimum 26.8% against
Keras' 7.2% for group norm near zero, which these tests would report."""

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


#: (row label, offset, exported with the fast paths): activations far from zero.
OFFSET_CASES = [
    ("`GroupNormalization(groups=4)`", 1000.0, True),
    ("`GroupNormalization(groups=4)`", 1000.0, False),
    ("`InstanceNormalization()`", 100.0, True),
    ("`LayerNormalization()`", 50.0, True),
    ("`LayerNormalization()`", 50.0, False),
    ("`LayerNormalization()`", 1e4, True),
]


@pytest.mark.parametrize("label,offset,fast_paths", OFFSET_CASES,
                         ids=[f"{label.strip('`').split('(')[0]}-{offset:g}-{'fast' if fast else 'general'}"
                              for label, offset, fast in OFFSET_CASES])
def test_int8_error_at_an_offset_within_keras_layers(table, tmp_path, label, offset, fast_paths):
    (ours, theirs), = [(o, t) for name, o, t in table.CASES if name == label]
    error = table.int8_error(table.model_with(ours()), str(tmp_path), fast_paths=fast_paths, offset=offset)
    reference = table.int8_error(table.model_with(theirs()), str(tmp_path), offset=offset)
    assert error <= 1.5 * reference + 0.01, f"{label} at {offset:g}: int8 error {error:.3f}, Keras' layer {reference:.3f}"


def test_render_marks_a_missing_keras_layer(table):
    text = table.render([("`A()`", 0.072, 0.268, 0.072), ("`B()`", 0.162, 0.162, None)])
    assert "| `A()` | 7.2% | 26.8% | 7.2% |" in text
    assert "| `B()` | 16.2% | 16.2% | – |" in text
