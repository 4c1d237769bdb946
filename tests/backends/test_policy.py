"""The plain-moments bound of :mod:`normlab.backends.policy` (JAX and
TensorFlow, whose fast paths share :func:`policy.stats`): which data keeps
the one-pass moments about 0, and how close to the float64 closed form the
hooks stay at the edge of that bound (the error grows like ``1 + r``)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from normlab.backends import policy
from tests.backends._closed_form import normalize_and_vjp

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"),
                                reason="torch shifts by a subsample mean and decides nothing")
EPSILON = 1e-3
SHAPE = (4, 24, 24, 64)
GROUPS = 8
#: Relative error allowed at ``r`` just below :data:`policy.MAX_RAW_RATIO`
#: (measured at r = 3.98: at most 3.4e-6, TensorFlow's layer-norm dgamma;
#: about a sample 1e-7 to 1.2e-6; at r = 15.9 up to 1.5e-5).
TOLERANCE = 1e-5


def _standardized(offset_in_stds, op, seed=0):
    """Data whose every slice has mean ``offset_in_stds`` and variance 1 exactly
    (float64, then float32): ``r = offset^2 / (1 + epsilon)`` in every slice."""
    z = np.random.default_rng(seed).standard_normal(SHAPE)
    axes = {"group": (1, 2, 4), "batch": (0, 1, 2), "layer": (3,)}[op]
    view = z.reshape(*SHAPE[:3], GROUPS, SHAPE[3] // GROUPS) if op == "group" else z
    view = (view - view.mean(axes, keepdims=True)) / view.std(axes, keepdims=True)
    return (offset_in_stds + view.reshape(SHAPE)).astype("float32")


def _raw(x, op):
    """Whether :func:`policy.stats` keeps the plain moments for ``x``."""
    if BACKEND == "jax":
        import jax.numpy as xnp

        from normlab.backends.jax import _XP as xp
    else:
        import tensorflow as xnp

        from normlab.backends.tensorflow_stats import _XP as xp
    data = xnp.reshape(xnp.asarray(x) if BACKEND == "jax" else xnp.constant(x),
                       (*SHAPE[:3], GROUPS, SHAPE[3] // GROUPS) if op == "group" else SHAPE)
    axes = {"group": (1, 2, 4), "batch": (0, 1, 2), "layer": (3,)}[op]
    count = math.prod(data.shape[a] for a in axes)

    def reduce(t):
        return xnp.sum(t, axis=axes, keepdims=True) if BACKEND == "jax" else xnp.reduce_sum(t, axis=axes,
                                                                                             keepdims=True)

    first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(len(data.shape)))
    stats = policy.stats(data, sample=lambda: data[first], sums=lambda t: (reduce(t), reduce(t * t)),
                         reduce=reduce, count=count, epsilon=EPSILON, xp=xp)
    return bool(keras.ops.convert_to_numpy(stats.raw))


@pytest.mark.parametrize("op", ["group", "batch", "layer"])
def test_plain_moments_are_kept_up_to_the_bound_and_no_further(op):
    bound = math.sqrt(policy.MAX_RAW_RATIO)
    assert _raw(_standardized(0.99 * bound, op), op)
    assert not _raw(_standardized(1.05 * bound, op), op)


@pytest.mark.parametrize("op", ["group", "batch", "layer"])
def test_hooks_at_the_edge_of_the_bound_match_float64(op, monkeypatch):
    hooks = __import__(f"normlab.backends.{BACKEND}", fromlist=["_"])
    if BACKEND == "tensorflow":  # the conditional statistics, which it takes for larger inputs
        from normlab.backends import tensorflow_stats

        monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", 0)
    x = _standardized(0.995 * math.sqrt(policy.MAX_RAW_RATIO), op)
    rng = np.random.default_rng(1)
    dy = rng.standard_normal(SHAPE).astype("float32")
    gamma = (1 + 0.5 * rng.standard_normal(SHAPE[3])).astype("float32")
    beta = rng.standard_normal(SHAPE[3]).astype("float32")

    def forward(x, g, b):
        if op == "group":
            return hooks.group_norm(x, groups=GROUPS, axis=3, gamma=g, beta=b, epsilon=EPSILON)
        if op == "batch":
            return hooks.batch_norm_train(x, axis=3, gamma=g, beta=b, epsilon=EPSILON)[0]
        return hooks.layer_norm(x, axes=[3], gamma=g, beta=b, epsilon=EPSILON)

    if BACKEND == "jax":
        import jax

        y, vjp = jax.vjp(jax.jit(forward), x, gamma, beta)
        got = [y, *vjp(dy)]
    else:
        import tensorflow as tf

        xt, g, b = tf.constant(x), tf.constant(gamma), tf.constant(beta)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([xt, g, b])
                y = forward(xt, g, b)
            return (y, *tape.gradient(y, [xt, g, b], output_gradients=tf.constant(dy)))

        got = list(step())
    want = normalize_and_vjp(x, dy, op, [3] if op == "layer" else 3, groups=GROUPS if op == "group" else None,
                             gamma=gamma, beta=beta, epsilon=EPSILON)
    for name, value in zip(["y", "dx", "dgamma", "dbeta"], got):
        value = np.asarray(keras.ops.convert_to_numpy(value), np.float64)
        error = np.abs(value - want[name]).max() / np.abs(want[name]).max()
        assert error <= TOLERANCE, f"{op} {name}: relative error {error:.2g} at r = {policy.MAX_RAW_RATIO:g}"


@pytest.mark.parametrize("op", ["group", "batch", "layer"])
def test_squares_beyond_the_float32_range_are_not_kept(op):
    """At an offset of 1e19 the squares of ``x`` overflow float32 (their sum is
    inf) while the mean's square does not: the plain moments must not be kept
    there (a variance of inf would make every output 0), the moments about a
    sample are within float32's range and exact."""
    from normlab import ops as nops

    z = np.random.default_rng(2).standard_normal(SHAPE)
    x = (1e19 + 1e17 * z).astype("float32")
    assert not _raw(x, op)
    y = {"group": lambda t: nops.group_norm(t, GROUPS, 3, epsilon=EPSILON),
         "batch": lambda t: nops.batch_norm(t, axis=3, training=True, epsilon=EPSILON),
         "layer": lambda t: nops.layer_norm(t, [3], epsilon=EPSILON)}[op](x)
    want = normalize_and_vjp(x, np.zeros(SHAPE), op, [3] if op == "layer" else 3,
                             groups=GROUPS if op == "group" else None, epsilon=EPSILON)["y"]
    np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(y), np.float64), want, rtol=0, atol=1e-5)
