"""normlab.testing.harness on layers beyond the activation norms."""

import keras

import normlab
from normlab.testing.harness import run_layer_test


def test_a_wrapper_with_a_bool_state_passes_the_mixed_precision_check():
    """The check asserted every weight float32: WeightNormalization's bool ``initialized`` failed it."""
    run_layer_test(normlab.WeightNormalization, {"layer": keras.layers.Dense(6), "data_init": False}, (4, 6),
                   expected_trainable=3, expected_non_trainable=1)
