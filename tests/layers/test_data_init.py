"""WeightNormalization's data-dependent initialization on batches it cannot initialize from."""

import warnings

import keras
import numpy as np
from keras import ops

import normlab


def test_a_training_call_on_one_sample_warns_keeps_g_and_bias_and_counts_as_initialized():
    """A training batch with one value per unit has nothing to initialize from: the
    layer says so, keeps ``g`` and the bias, and counts as initialized from then on."""
    x = np.random.default_rng(5).normal(size=(4, 3)).astype("float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, bias_initializer="ones"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x[:1], training=True)
    messages = [str(w.message) for w in caught if "one value per unit" in str(w.message)]
    assert len(messages) == 1 and "marked initialized" in messages[0]
    assert bool(ops.convert_to_numpy(layer.initialized))
    layer(x)  # a batch with a spread no longer initializes
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g), [1.0, 1.0])
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.layer.bias), [1.0, 1.0])


def test_an_empty_training_batch_leaves_data_init_to_the_next():
    """An empty batch trains nothing either: it neither initializes nor marks the layer initialized."""
    x = np.array([[-4.0, -4.0], [4.0, 4.0]], "float32")
    layer = normlab.WeightNormalization(keras.layers.Dense(2, kernel_initializer="identity"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert tuple(layer(x[:0], training=True).shape) == (0, 2)
    assert not bool(ops.convert_to_numpy(layer.initialized))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), x / 4, atol=1e-6)
    assert bool(ops.convert_to_numpy(layer.initialized))
