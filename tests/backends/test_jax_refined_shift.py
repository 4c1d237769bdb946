"""JAX's shifted statistics are taken about the plain moments' mean
(:data:`normlab.backends.jax.REFINED_SHIFT`), not about each slice's first
value: XLA's sums of thousands of terms err by a few 1e-7 relative, and
one-pass moments about a first value 3 standard deviations out multiplied
that by 10 (2.2e-6 to 4.4e-6 off float64 on ``1e4 + N(0, 1)``, outputs up to
4.5), and a far sample elsewhere in the batch moved a sample's outputs by up
to 4.8e-6 (it sends every slice to the shifted moments)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import ops as nops

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the JAX hooks' shifted statistics")

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


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_shifted_moments_are_exact_with_outlier_first_values(op, jit):
    import jax

    x = _data(op)[:4]
    call = jax.jit(OPS[op][1]) if jit else OPS[op][1]
    got = np.asarray(call(x))
    np.testing.assert_allclose(got, _expected(op, x), rtol=0, atol=1.5e-6)


@pytest.mark.parametrize("op", ["instance", "group", "layer"])
def test_a_far_sample_in_the_batch_moves_no_other_sample(op):
    x = _data(op)
    alone = np.asarray(OPS[op][1](x[:4]))
    batch = np.asarray(OPS[op][1](x))
    np.testing.assert_allclose(batch[:4], alone, rtol=0, atol=5e-7)
