"""BatchNormalization: harness, anchors, moving statistics, training/inference, masks."""

import re
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test


@pytest.mark.parametrize("kwargs, shape", [(dict(axis=3), (4, 5, 5, 10)), (dict(axis=1), (4, 3, 6)), (dict(), (8, 5))])
def test_harness(kwargs, shape):
    run_layer_test(normlab.BatchNormalization, kwargs, shape, expected_trainable=2, expected_non_trainable=2)


def test_param_counts_in_summary_anchor():
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(10, 3), normlab.BatchNormalization(axis=3)])
    bn = model.layers[-1]
    assert bn.count_params() == 40
    assert sum(int(np.prod(w.shape)) for w in bn.non_trainable_weights) == 20


def test_training_uses_batch_statistics_and_updates_moving_averages():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(16, 4, 4, 5)).astype("float32")
    layer = normlab.BatchNormalization(momentum=0.9, epsilon=1e-3)
    y = ops.convert_to_numpy(layer(x, training=True))
    expected, mean, var = reference.batch_norm(x)
    np.testing.assert_allclose(y, expected, atol=2e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)


def test_inference_uses_moving_statistics():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    layer = normlab.BatchNormalization(moving_mean_initializer="ones", moving_variance_initializer=keras.initializers.Constant(4.0))
    y = ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(y, (x - 1.0) / np.sqrt(4.0 + 1e-3), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), np.ones(3))  # unchanged


def test_trainable_false_means_inference_mode():
    x = np.random.default_rng(0).normal(5.0, 1.0, size=(8, 3)).astype("float32")
    layer = normlab.BatchNormalization()
    layer.build(x.shape)
    layer.trainable = False
    y = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), np.zeros(3))


def test_mask_excludes_padded_steps_from_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    padded = np.where(mask[..., None], x, 100.0).astype("float32")
    layer = normlab.BatchNormalization(momentum=0.0)
    layer(padded, training=True, mask=mask)
    _, mean, var = reference.batch_norm(x, mask=mask[..., None].astype("float64"))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), var, atol=1e-5)
    with pytest.raises(ValueError, match=r"Invalid `mask`.*Received: mask.shape=\(2, 5, 1\), inputs.shape=\(2, 5, 3\)"):
        layer(padded, training=True, mask=mask[..., None])


def test_synchronized_outside_any_distribution_equals_unsynchronized():
    # Cross-replica runs are in tests/distributed; with no strategy, axis name or
    # process group there is one replica, and the flag changes nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synced = normlab.BatchNormalization(axis=-1, synchronized=True)
    assert synced.get_config()["synchronized"] is True
    plain = normlab.BatchNormalization(axis=-1)
    x = (1e4 + np.random.default_rng(1).normal(size=(6, 5, 3))).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(synced(x, training=True)), ops.convert_to_numpy(plain(x, training=True))
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(synced.moving_mean), ops.convert_to_numpy(plain.moving_mean))


def test_large_offset_training_stays_exact():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(32, 6, 6, 4))).astype("float32")
    y = ops.convert_to_numpy(normlab.BatchNormalization()(x, training=True))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, reference.batch_norm(x.astype(np.float64))[0], atol=1e-4)


@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("channels", [16, 10])
def test_large_offset_inference_stays_exact(offset, channels):
    """With the moving statistics near a large offset, x - mean is formed
    first (docs/concepts.md): within 1e-6 of float64 on every backend, where
    Keras 3.15 folds them into x * a + b on TensorFlow and JAX (9e-4 off at 1e4)."""
    rng = np.random.default_rng(0)
    x = (offset + rng.normal(size=(8, 6, 6, channels))).astype("float32")
    mean = (offset + rng.uniform(-1, 1, channels)).astype("float32")
    variance = rng.uniform(0.5, 2.0, channels).astype("float32")
    expected = (x.astype(np.float64) - mean) / np.sqrt(variance.astype(np.float64) + 1e-3)
    errors = {}
    for make in (normlab.BatchNormalization, keras.layers.BatchNormalization):
        layer = make()
        layer.build(x.shape)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        errors[make.__module__.split(".")[0]] = np.abs(ops.convert_to_numpy(layer(x, training=False)) - expected).max()
    assert errors["normlab"] < 1e-6
    if keras.backend.backend() != "torch":  # Keras' torch backend subtracts the mean first as well
        assert errors["keras"] > 1e-4 * offset / 1e4


@pytest.mark.parametrize("shape", [(5, 2, 3), (4, 3, 3, 2)])
def test_keras_mask_covers_every_axis_but_the_last_whatever_the_channel_axis(shape):
    # A Masking layer's mask has the input's shape minus its last axis; with
    # axis=1 it once went to the channel axis: a broadcast error for (5, 2, 3)
    # and, for (4, 3, 3, 2), statistics off by 0.4 without any error.
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    x[:, 1] = 0.0
    masked = keras.layers.Masking()(x)
    ours = normlab.BatchNormalization(axis=1, momentum=0.0)
    theirs = keras.layers.BatchNormalization(axis=1, momentum=0.0)
    y = ops.convert_to_numpy(ours(masked, training=True))
    np.testing.assert_allclose(y, ops.convert_to_numpy(theirs(masked, training=True)), atol=1e-4)
    keep = np.any(x != 0.0, axis=-1, keepdims=True).astype("float64")  # what Masking keeps
    _, mean, var = reference.batch_norm(x, axis=1, mask=np.broadcast_to(keep, x.shape))
    np.testing.assert_allclose(ops.convert_to_numpy(ours.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(ours.moving_variance), var, rtol=1e-5)


@pytest.mark.parametrize("mask_shape", [(4, 3), (4, 5, 3)])
def test_a_mask_that_does_not_fit_the_inputs_is_named_as_given(mask_shape):
    # (4, 3) for (4, 5, 3) was reported as "mask of shape (4, 3, 1)" with the
    # advice to pass the input's shape, which is refused too.
    with pytest.raises(ValueError, match=re.escape(
            f"Received: mask.shape={mask_shape}, inputs.shape=(4, 5, 3). Pass a mask of shape inputs.shape[:-1]")):
        normlab.BatchNormalization()(np.ones((4, 5, 3), "float32"), training=True, mask=np.ones(mask_shape, bool))
    normlab.BatchNormalization()(np.ones((4, 5, 3), "float32"), training=True, mask=np.ones((4, 1), bool))


@pytest.mark.parametrize("kwargs", [{}, {"renorm": True}, {"virtual_batch_size": 2}])
@pytest.mark.parametrize("shape", [(0, 3), (0, 4, 4, 3), (2, 0, 4, 3)])
def test_empty_batch_in_training_returns_empty_and_keeps_the_moving_statistics(shape, kwargs):
    """Also a batch whose spatial size is 0 (no element either): its 0/0
    statistics went into the moving ones (NaN for good, as Keras' BN does)."""
    layer = normlab.BatchNormalization(**kwargs)
    layer.build((None,) + shape[1:])
    before = [ops.convert_to_numpy(w) for w in layer.non_trainable_weights]
    y = layer(np.zeros(shape, "float32"), training=True)
    assert tuple(y.shape) == shape
    for old, new in zip(before, layer.non_trainable_weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(new), old)


@pytest.mark.parametrize("make", [
    lambda: normlab.BatchNormalization(axis=1),
    lambda: normlab.EvoNormB0(),
    lambda: normlab.SwitchableNormalization(),
], ids=["channels_first", "evo_norm_b0", "switchable"])
def test_a_zero_spatial_size_in_training_keeps_the_moving_statistics(make):
    """SwitchableNormalization failed in a reshape; the others took the 0/0 statistics (NaN)."""
    layer = make()
    layer.build((None, 4, 4, 8))
    before = [ops.convert_to_numpy(w) for w in layer.non_trainable_weights]
    assert tuple(layer(np.zeros((2, 4, 0, 8), "float32"), training=True).shape) == (2, 4, 0, 8)
    for old, new in zip(before, layer.non_trainable_weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(new), old)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a graph's unknown batch size")
@pytest.mark.parametrize("make", [
    lambda: normlab.BatchNormalization(),  # channels-last, 8 channels: TensorFlow's fused kernel
    lambda: normlab.BatchNormalization(axis=1),
    lambda: normlab.BatchNormalization(renorm=True),
    lambda: normlab.BatchNormalization(virtual_batch_size=2),
    lambda: normlab.EvoNormB0(),
    lambda: normlab.SwitchableNormalization(),
], ids=["fused", "channels_first", "renorm", "ghost", "evo_norm_b0", "switchable"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize("empty", [(0, 4, 4, 8), (2, 4, 0, 8)], ids=["batch", "spatial"])
def test_a_batch_that_is_empty_only_at_run_time(make, fast, empty):
    """In a ``tf.function`` with an unknown batch size, a batch of 0 (a
    replica's empty share under ``MirroredStrategy.fit``, a filtered batch)
    failed in a reshape of the statistics' sample row; it returns the empty
    batch and keeps the moving statistics. So does an unknown spatial size
    that is 0 at run time (it failed likewise)."""
    import contextlib

    import tensorflow as tf

    from normlab import backends

    layer = make()
    layer.build((None, 4, 4, 8))
    before = [ops.convert_to_numpy(w) for w in layer.non_trainable_weights]
    step = tf.function(lambda x: layer(x, training=True), input_signature=[tf.TensorSpec([None, 4, None, 8])])
    with contextlib.nullcontext() if fast else backends.disabled():
        y = step(tf.zeros(empty))
    assert tuple(y.shape) == empty
    for old, new in zip(before, layer.non_trainable_weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(new), old)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a graph's unknown sizes")
def test_only_batch_statistics_get_the_empty_batch_guard():
    """The guard (a pad of the sample row) is for the unknown axes of batch
    statistics, which may be 0 at run time; per-sample norms over unknown
    spatial sizes get none."""
    import tensorflow as tf

    from normlab import backends

    def ops_in(layer, shape):
        spec = tf.TensorSpec(shape)
        with backends.disabled():
            graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(spec).graph
        return {op.type for op in graph.get_operations()}

    assert not {"Pad", "PadV2"} & ops_in(normlab.GroupNormalization(groups=2), [None, None, None, 8])
    assert not {"Pad", "PadV2"} & ops_in(normlab.InstanceNormalization(), [2, None, None, 8])
    assert {"Pad", "PadV2"} & ops_in(normlab.BatchNormalization(), [None, None, None, 8])


def test_a_mask_counts_by_its_truth_value_as_keras():
    # A mask of token ids (nonzero: a real position) or of -1/1 selects, it does not weigh.
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(4, 5, 2)).astype("float32")
    kept = rng.random((4, 5)) > 0.3
    for mask in (np.where(kept, rng.integers(1, 4, kept.shape), 0).astype("float32"),
                 np.where(kept, 1.0, -1.0).astype("float32")):
        ours, theirs, boolean = (normlab.BatchNormalization(), keras.layers.BatchNormalization(),
                                 normlab.BatchNormalization())
        y = ops.convert_to_numpy(ours(x, training=True, mask=mask))
        theirs(x, training=True, mask=mask)
        expected = ops.convert_to_numpy(boolean(x, training=True, mask=mask != 0))
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_allclose(ops.convert_to_numpy(ours.moving_mean), ops.convert_to_numpy(theirs.moving_mean),
                                   atol=1e-6)


@pytest.mark.parametrize("form", [{}, {"virtual_batch_size": 2}, {"renorm": True}])
def test_a_batch_of_padding_only_leaves_the_moving_statistics(form):
    """It moved them toward a mean and variance of 0 (moving_variance 1.0 -> 0.99 a step),
    as an empty batch does not."""
    layer = normlab.BatchNormalization(**form)
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype("float32")
    layer(x)
    before = [ops.convert_to_numpy(w).copy() for w in layer.non_trainable_weights]
    layer(x, training=True, mask=np.zeros((2, 6), bool))
    for w, b in zip(layer.non_trainable_weights, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(w), b)
    layer(x, training=True, mask=np.ones((2, 6), bool))  # a kept position: they move
    assert not np.allclose(ops.convert_to_numpy(layer.moving_mean), before[0])


def test_integer_training_flags_are_keras_learning_phases():
    """``training=0`` is inference and ``training=1`` training, as Keras' learning phase."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 5, 3)).astype("float32")
    layer = normlab.BatchNormalization()
    layer.build(x.shape)
    layer.moving_mean.assign(np.ones(3, "float32"))
    layer.moving_variance.assign(np.full(3, 4.0, "float32"))
    y = ops.convert_to_numpy(layer(x, training=0))
    np.testing.assert_allclose(y, (x.astype("float64") - 1.0) / np.sqrt(4.0 + 1e-3), atol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.moving_mean), np.ones(3))
    y = ops.convert_to_numpy(layer(x, training=1))
    batch = x.astype("float64").reshape(-1, 3)
    np.testing.assert_allclose(y, (x - batch.mean(axis=0)) / np.sqrt(batch.var(axis=0) + 1e-3), atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.99 + 0.01 * batch.mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("flag", [np.float64(0.5), np.array(0.5), np.float32(1.0), np.int64(2), 0.5, 2, "False"],
                         ids=["np.float64", "0-d float array", "np.float32(1)", "np.int64(2)", "0.5", "2", "str"])
def test_a_training_flag_that_is_not_a_bool_is_an_error(flag):
    """NumPy values passed the check as tensors and counted as True: batch statistics, moving averages
    updated. (Keras' __call__ makes a tensor of a NumPy value: a float one is refused by its dtype; an int
    one passes as tensors do, unread; called directly, its value is read.)"""
    layer = normlab.BatchNormalization()
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    layer.build(x.shape)
    with pytest.raises(TypeError, match=r"Invalid `training`"):
        if isinstance(flag, np.integer):
            layer.call(x, training=flag)
        else:
            layer(x, training=flag)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.moving_mean), np.zeros(3))


@pytest.mark.parametrize("flag", [np.bool_(True), np.array(True), np.int64(1)])
def test_numpy_flags_holding_a_bool_are_taken(flag):
    layer = normlab.BatchNormalization()
    x = np.random.default_rng(0).normal(3.0, 1.0, size=(4, 3)).astype("float32")
    layer(x, training=flag)
    assert np.abs(ops.convert_to_numpy(layer.moving_mean)).max() > 0  # training: the moving mean moved
