"""Derivatives of TensorFlow's fused batch-norm kernel beyond the first
(:mod:`normlab.backends.tensorflow_fused`): forward mode from around a
``tf.function`` (TensorFlow's own second derivative gave no tangent there)
and double backward, in training and with given statistics, against the
general path in float64."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow hook")

SHAPE = (8, 16, 32, 64)  # 2**18 elements: the fused kernel in training too (FUSED_MIN_ELEMENTS)
EPSILON = 1e-3
MODES = {"graph": False, "xla": True}


def _inputs(offset=3.0):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    c = SHAPE[-1]
    arrays = dict(x=offset + rng.normal(0.5, 2.0, size=SHAPE), tangent=rng.normal(size=SHAPE),
                  mean=offset + rng.uniform(-1, 1, size=c), variance=rng.uniform(0.5, 4.0, size=c),
                  gamma=rng.uniform(0.5, 1.5, size=c), beta=rng.normal(size=c))
    return ({k: tf.constant(v, tf.float32) for k, v in arrays.items()},
            {k: tf.constant(v, tf.float64) for k, v in arrays.items()})


def _norm(training, t):
    def norm(x, gamma):
        if training:
            return nops.batch_norm(x, gamma=gamma, beta=t["beta"], epsilon=EPSILON, training=True)
        return nops.batch_norm(x, t["mean"], t["variance"], gamma=gamma, beta=t["beta"], epsilon=EPSILON)
    return norm


def _close(got, want, tolerance=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=tolerance)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "given-statistics"])
def test_forward_accumulator_around_a_function(training, mode):
    import tensorflow as tf

    t32, t64 = _inputs()
    fn = tf.function(_norm(training, t32), jit_compile=MODES[mode])
    with tf.autodiff.ForwardAccumulator([t32["x"], t32["gamma"]], [t32["tangent"], t32["beta"]]) as acc:
        y = fn(t32["x"], t32["gamma"])
    with backends.disabled(), tf.autodiff.ForwardAccumulator(
            [t64["x"], t64["gamma"]], [t64["tangent"], t64["beta"]]) as acc64:
        y64 = _norm(training, t64)(t64["x"], t64["gamma"])
    assert acc.jvp(y) is not None, "the tangent was lost"
    _close(acc.jvp(y), acc64.jvp(y64))


def _gradient_fn(norm, mode):
    """A ``tf.function`` of the gradient of ``sum(sin(y))`` for ``x`` and ``gamma``
    (one tape inside: the fused kernel and its gradient kernel run)."""
    import tensorflow as tf

    def gradient(x, gamma):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma])
            y = tf.reduce_sum(tf.sin(norm(x, gamma)))
        return tape.gradient(y, [x, gamma])

    return tf.function(gradient, jit_compile=MODES[mode])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "given-statistics"])
def test_hessian_vector_products_from_around_a_gradient_function(training, mode):
    """Forward over reverse: every term of the second derivative (for the
    gradient kernel's ``dy``, ``x`` and ``scale``)."""
    import tensorflow as tf

    t32, t64 = _inputs()
    gradient = _gradient_fn(_norm(training, t32), mode)
    with tf.autodiff.ForwardAccumulator([t32["x"], t32["gamma"]], [t32["tangent"], t32["beta"]]) as acc:
        got = gradient(t32["x"], t32["gamma"])
    with backends.disabled():
        gradient64 = _gradient_fn(_norm(training, t64), "graph")
        with tf.autodiff.ForwardAccumulator([t64["x"], t64["gamma"]], [t64["tangent"], t64["beta"]]) as acc64:
            want = gradient64(t64["x"], t64["gamma"])
    for got_part, want_part in zip(got, want):
        _close(acc.jvp(got_part), acc64.jvp(want_part))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "given-statistics"])
def test_gradient_penalty_from_tapes_around_a_function(training, mode):
    """Reverse over reverse from around the function, whose gradient and its
    gradient TensorFlow derives from the kernel's: the gradients of
    ``|d sum(sin(y)) / d(x, gamma)|^2`` take every term of the second derivative."""
    import tensorflow as tf

    def penalty(t, norm):
        with tf.GradientTape() as outer:
            outer.watch([t["x"], t["gamma"]])
            with tf.GradientTape() as inner:
                inner.watch([t["x"], t["gamma"]])
                y = tf.reduce_sum(tf.sin(norm(t["x"], t["gamma"])))
            g = inner.gradient(y, [t["x"], t["gamma"]])
            z = tf.reduce_sum(g[0] * g[0]) + tf.reduce_sum(g[1] * g[1])
        return outer.gradient(z, [t["x"], t["gamma"]])

    t32, t64 = _inputs()
    got = penalty(t32, tf.function(_norm(training, t32), jit_compile=MODES[mode]))
    with backends.disabled():
        want = penalty(t64, _norm(training, t64))
    for got_part, want_part in zip(got, want):
        _close(got_part, want_part, 4e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "given-statistics"])
def test_the_kernels_second_derivative_against_its_closed_form(training, mode):
    """The kernel alone, small: the gradients of ``|g|^2`` for ``x`` and ``scale``
    resolve each term of :func:`~normlab.backends.tensorflow_fused._second_derivative`
    (a 1% error in the smallest shows as 1e-5 of the largest gradient)."""
    import tensorflow as tf

    from normlab.backends.tensorflow_fused import fused_batch_norm

    rng = np.random.default_rng(1)
    shape, c = (4, 8, 8, 16), 16
    x, scale, offset = rng.normal(0.5, 2.0, size=shape), rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    mean, variance = rng.normal(size=c), rng.uniform(1.0, 2.0, c)

    def closed_form(x, scale, offset):
        if training:
            mean_, variance_ = tf.nn.moments(x, [0, 1, 2])
        else:
            mean_, variance_ = tf.constant(mean), tf.constant(variance)
        return (x - mean_) * tf.math.rsqrt(variance_ + EPSILON) * scale + offset

    def kernel(x, scale, offset):
        empty = tf.zeros([0])
        given = (empty, empty) if training else (tf.constant(mean, tf.float32), tf.constant(variance, tf.float32))
        return fused_batch_norm(x, scale, offset, *given, epsilon=EPSILON, training=training)[0]

    def penalty(norm, *inputs):
        with tf.GradientTape() as outer:
            outer.watch(inputs)
            with tf.GradientTape() as inner:
                inner.watch(inputs)
                y = tf.reduce_sum(tf.sin(norm(*inputs)))
            z = sum(tf.reduce_sum(g * g) for g in inner.gradient(y, inputs))
        return outer.gradient(z, inputs[:2])

    got = penalty(tf.function(kernel, jit_compile=MODES[mode]),
                  *(tf.constant(a, tf.float32) for a in (x, scale, offset)))
    want = penalty(closed_form, *(tf.constant(a) for a in (x, scale, offset)))
    for got_part, want_part in zip(got, want):
        _close(got_part, want_part, 3e-6)
