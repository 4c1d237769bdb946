"""normlab.ops.dynamic_tanh against the float64 reference: axes, dtypes, gradients, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import BACKEND, FIRST3, FLAT, LAST4, call, per_channel, rng_normal, to_np


@pytest.mark.parametrize("shape, axis", [(FLAT, -1), (LAST4, -1), (FIRST3, 1), (LAST4, [1, 2, 3])])
def test_matches_reference(shape, axis):
    x = rng_normal(shape, 0.5, 3.0)
    feature = [shape[a % len(shape)] for a in np.atleast_1d(axis)]
    gamma = per_channel(int(np.prod(feature)), 1).reshape(feature)
    beta = per_channel(int(np.prod(feature)), 2, -1, 1).reshape(feature)
    y = to_np(call(nops.dynamic_tanh, x, alpha=0.7, axis=axis, gamma=gamma, beta=beta))
    np.testing.assert_allclose(y, reference.dynamic_tanh(x, 0.7, axis, gamma, beta), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, np.array([0.25], "float32"), np.array(2.0, "float32")])
def test_alpha_as_a_float_a_scalar_or_shape_1(alpha):
    x = rng_normal(LAST4, 0.0, 2.0)
    y = to_np(call(nops.dynamic_tanh, x, alpha=alpha))
    np.testing.assert_allclose(y, reference.dynamic_tanh(x, alpha), rtol=1e-6, atol=1e-6)
    assert y.shape == x.shape


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32_and_correctly_rounded(dtype):
    x = rng_normal(LAST4, 0.0, 3.0)
    xh = ops.cast(x, dtype)
    y = call(nops.dynamic_tanh, xh, alpha=0.5)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    exact = reference.dynamic_tanh(to_np(xh), 0.5)  # of the rounded input, in float64
    ulp = 2.0 ** (-11 if dtype == "float16" else -8)  # half an ulp of values in [0.5, 1)
    np.testing.assert_array_less(np.abs(to_np(y) - exact), ulp + 1e-7)


def test_every_output_depends_on_its_own_input_only():
    x = rng_normal(LAST4, 0.5, 2.0)
    y = to_np(nops.dynamic_tanh(x, alpha=0.5))
    np.testing.assert_allclose(to_np(nops.dynamic_tanh(x[:1], alpha=0.5)), y[:1], rtol=0, atol=0)
    np.testing.assert_allclose(to_np(nops.dynamic_tanh((x + 1e6 * (np.arange(6) == 0)).astype("float32"), alpha=0.5))[..., 1:],
                               y[..., 1:], rtol=0, atol=0)


def test_gradients_match_the_closed_form():
    """d/dx = alpha * gamma * (1 - t^2), d/dalpha = sum(x * gamma * (1 - t^2) * dy),
    d/dgamma = sum(t * dy), d/dbeta = sum(dy), with t = tanh(alpha * x)."""
    x = rng_normal((3, 4, 5), 0.2, 1.5).astype("float64")
    dy = rng_normal((3, 4, 5), seed=1).astype("float64")
    alpha = np.array([0.6])
    gamma, beta = per_channel(5, 3).astype("float64"), per_channel(5, 4).astype("float64")
    grads = _gradients(x, alpha, gamma, beta, dy)
    t = np.tanh(alpha[0] * x)
    sech2 = 1.0 - t ** 2
    expected = [alpha[0] * gamma * sech2 * dy, np.array([np.sum(x * gamma * sech2 * dy)]),
                np.sum(t * dy, axis=(0, 1)), np.sum(dy, axis=(0, 1))]
    exact = BACKEND != "jax"  # JAX holds float64 arrays as float32 unless jax_enable_x64 is set
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-9 if exact else 2e-5, atol=1e-12 if exact else 2e-5)


def _gradients(x, alpha, gamma, beta, dy):
    """The gradients of ``sum(dynamic_tanh(...) * dy)`` for x, alpha, gamma and beta, float64."""
    if BACKEND == "torch":
        import torch

        device = ops.zeros(()).device  # Keras' device
        ts = [torch.tensor(a, requires_grad=True, device=device) for a in (x, alpha, gamma, beta)]
        y = nops.dynamic_tanh(ts[0], ts[1], gamma=ts[2], beta=ts[3])
        (y * torch.tensor(dy, device=device)).sum().backward()
        return [t.grad.cpu().numpy() for t in ts]
    if BACKEND == "jax":
        import jax

        def loss(*args):
            return (nops.dynamic_tanh(args[0], args[1], gamma=args[2], beta=args[3]) * dy).sum()

        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2, 3))(x, alpha, gamma, beta)]
    import tensorflow as tf

    ts = [tf.Variable(a) for a in (x, alpha, gamma, beta)]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(nops.dynamic_tanh(ts[0], ts[1], gamma=ts[2], beta=ts[3]) * dy)
    return [g.numpy() for g in tape.gradient(loss, ts)]


def test_errors_name_argument_value_and_fix():
    x = rng_normal(LAST4)
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"Invalid `alpha`.*Received: alpha="):
            nops.dynamic_tanh(x, alpha=bad)
    with pytest.raises(TypeError, match=r"Invalid `alpha`: expected a positive float or a tensor.*'0.5' of type str"):
        nops.dynamic_tanh(x, alpha="0.5")
    with pytest.raises(ValueError, match=r"Invalid `alpha`: expected one value.*alpha.shape=\(6,\).*fold it into gamma"):
        nops.dynamic_tanh(x, alpha=np.ones(6, "float32"))
    with pytest.raises(ValueError, match=r"Invalid `gamma`: expected a tensor of shape \(6,\).*gamma.shape=\(3,\)"):
        nops.dynamic_tanh(x, gamma=np.ones(3, "float32"))
    with pytest.raises(ValueError, match=r"Received: axis=0"):
        nops.dynamic_tanh(x, axis=0)
