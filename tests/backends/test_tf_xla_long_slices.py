"""TensorFlow under XLA: slices of :data:`~normlab.backends.tensorflow_stats.CENTERED_MIN_TERMS`
terms or more take their statistics in a second pass over the residuals.

XLA's CPU sums over axes that are not innermost (batch norm's batch and
spatial axes) round more than a sequential pass; in one pass the
cancellation ``E[d^2] - E[d]^2`` about a sample shift (here an outlier,
each channel's first element) multiplies that rounding. Measured at
``(2, 128, 128, 3)`` (32768 terms per channel), this input, three seeds:
1.5e-7 to 2.1e-7 with the second pass, 1.5e-6 to 2.9e-6 without it,
relative to the output's largest magnitude.
"""

import keras
import numpy as np
import pytest

import normlab

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA statistics")

SHAPE = (2, 128, 128, 3)


def _data(seed):
    x = 3.0 + np.random.default_rng(seed).standard_normal(SHAPE)
    x[0, 0, 0, :] += 5.0  # the slice's sample (its first element) 5 standard deviations off
    return x.astype("float32")


def test_batch_norm_of_long_slices_is_exact_under_xla():
    import tensorflow as tf

    from normlab.backends import tensorflow_stats

    assert np.prod(SHAPE[:3]) >= tensorflow_stats.CENTERED_MIN_TERMS
    assert np.prod(SHAPE) < tensorflow_stats.FUSED_MIN_ELEMENTS  # the composite path, not the fused kernel
    layer = normlab.BatchNormalization(epsilon=1e-3, center=False, scale=False)
    step = tf.function(lambda t: layer(t, training=True), jit_compile=True)
    errors = []
    for seed in range(3):
        x = _data(seed)
        got = step(tf.constant(x)).numpy()
        x64 = x.astype(np.float64)
        expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-3)
        errors.append(np.abs(got - expected).max() / np.abs(expected).max())
    assert max(errors) < 7.5e-7, errors
