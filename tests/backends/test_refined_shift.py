"""JAX's and TensorFlow's shifted statistics are taken about a shift near
each slice's mean (:data:`normlab.backends.jax.REFINED_SHIFT`,
:data:`normlab.backends.tensorflow_stats.REFINED_SHIFT`), not about its first
value: XLA's sums of thousands of terms err by a few 1e-7 relative, and
one-pass moments about a first value 3 standard deviations out multiplied
that by 10 (2.2e-6 to 4.4e-6 off float64 on ``1e4 + N(0, 1)``, outputs up to
4.5), and a far sample elsewhere in the batch moved a sample's outputs by up
to 4.8e-6 on JAX and 1.4e-5 on TensorFlow under XLA (it sends every slice to
the shifted moments)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import ops as nops

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"), reason="the JAX and TensorFlow hooks")

#: The compiled modes per backend: eager and jit (JAX), a graph and XLA (TensorFlow).
MODES = {"jax": ["eager", "jit"], "tensorflow": ["graph", "xla"]}.get(BACKEND, [])


def _call(op, mode):
    fn = OPS[op][1]
    if mode == "jit":
        import jax

        return jax.jit(fn)
    if mode in ("graph", "xla"):
        import tensorflow as tf

        return tf.function(fn, jit_compile=mode == "xla")
    return fn

#: op: (the reduced axes of the (N, H, W, 4, 4) view, the op).
OPS = {
    "instance": ((1, 2), lambda t: nops.instance_norm(t)),
    "group": ((1, 2, 4), lambda t: nops.group_norm(t, 4)),
    "layer": ((1, 2, 3, 4), lambda t: nops.layer_norm(t, [1, 2, 3])),
    "batch": ((0, 1, 2), lambda t: nops.batch_norm(t, training=True)),
}


def _data(op):
    """``1e4 + N(0, 1)``, each slice standardized, its first value 3 standard
    deviations out; sample 4 has first values 300 out."""
    z = np.random.default_rng(3).normal(size=(5, 64, 64, 16))
    axes = (0, 1, 2) if op == "batch" else (1, 2, 3) if op == "layer" else (1, 2)
    z = (z - z.mean(axis=axes, keepdims=True)) / z.std(axis=axes, keepdims=True)
    z[:, 0, 0, :] = 3.0
    z[4, 0, 0, :] = 300.0
    return (z + 1e4).astype(np.float32)


def _expected(op, x):
    reduced, _ = OPS[op]
    grouped = x.astype(np.float64).reshape(x.shape[:3] + (4, 4))
    mean, var = grouped.mean(reduced, keepdims=True), grouped.var(reduced, keepdims=True)
    return ((grouped - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_shifted_moments_are_exact_with_outlier_first_values(op, mode):
    x = _data(op)[:4]
    got = np.asarray(_call(op, mode)(x))
    # TensorFlow: its channels-last batch norm runs the fused kernel, whose variance is one-pass with oneDNN
    # (4.7e-6 here, normlab.backends.policy), and XLA's sums over 65536 terms not innermost err by more
    # (layer norm, 2.4e-6).
    np.testing.assert_allclose(got, _expected(op, x), rtol=0, atol=1.5e-6 if BACKEND == "jax" else 6e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["instance", "group", "layer"])
def test_a_far_sample_in_the_batch_moves_no_other_sample(op, mode):
    x = _data(op)
    call = _call(op, mode)
    alone = np.asarray(call(x[:4]))
    batch = np.asarray(call(x))
    np.testing.assert_allclose(batch[:4], alone, rtol=0, atol=5e-7)


@pytest.mark.parametrize("mode", MODES)
def test_a_nan_sample_moves_no_other_sample(mode):
    # A NaN in one sample sends every slice to the shifted moments, as a far sample does.
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 64)).astype(np.float32)
    poisoned = x.copy()
    poisoned[0, 1, 1, 1] = np.nan
    call = _call("instance", mode)
    np.testing.assert_allclose(np.asarray(call(poisoned))[1:], np.asarray(call(x))[1:], rtol=0, atol=1e-6)
