"""JAX's batch norm with given statistics (inference,
:func:`normlab.backends.jax.batch_norm_infer`): eager calls run as one jitted
call (the general path's ops dispatched one by one took 0.7 ms on (2, 16,
16, 8), the jitted call 13 us), with the general path's numbers: ``x - mean``
first, exact at large offsets, half precision computed in float32, a zero
variance at ``epsilon=0`` scaled by 0, and the same gradients. Under a staged
trace it declines, and the general path is traced."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the JAX hook")

EPSILON = 1e-3
TOLERANCE = {"float32": 2e-6, "bfloat16": 8e-3, "float16": 1e-3}

# id: (shape, channel axis)
LAYOUTS = {"nhwc": ((3, 5, 7, 16), 3), "nchw": ((3, 16, 5, 7), 1), "nc": ((40, 8), 1),
           "ndhwc": ((2, 3, 4, 5, 8), 4), "nlc": ((2, 9, 24), 2)}


def _data(layout, offset, seed=0):
    shape, axis = LAYOUTS[layout]
    c = shape[axis]
    rng = np.random.default_rng(seed)
    x = offset + rng.normal(0.5, 2.0, size=shape)
    mean, variance = offset + rng.uniform(-1, 1, size=c), rng.uniform(0.5, 4.0, size=c)
    gamma, beta = rng.uniform(0.5, 1.5, size=c), rng.normal(size=c)
    return [np.asarray(a, np.float32) for a in (x, mean, variance, gamma, beta)], axis


def _expected(x, mean, variance, gamma, beta, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    x, mean, variance, gamma, beta = (np.asarray(a, np.float64) for a in (x, mean, variance, gamma, beta))
    return (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + EPSILON) * gamma.reshape(shape) \
        + beta.reshape(shape)


def _call(x, mean, variance, gamma, beta, axis, epsilon=EPSILON):
    return nops.batch_norm(x, mean, variance, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parity_with_the_general_path_and_float64(layout, offset):
    (x, mean, variance, gamma, beta), axis = _data(layout, offset)
    from normlab.backends import jax as hooks

    assert hooks.batch_norm_infer(x, axis=axis, mean=mean, variance=variance, gamma=gamma, beta=beta,
                                  epsilon=EPSILON) is not None
    fast = np.asarray(_call(x, mean, variance, gamma, beta, axis))
    with backends.disabled():
        general = np.asarray(_call(x, mean, variance, gamma, beta, axis))
    expected = _expected(x, mean, variance, gamma, beta, axis)
    np.testing.assert_allclose(fast, expected, rtol=0, atol=TOLERANCE["float32"] * np.abs(expected).max())
    np.testing.assert_allclose(fast, general, rtol=0, atol=2 * TOLERANCE["float32"] * np.abs(expected).max())


@pytest.mark.parametrize("dtype, offset", [("float16", 0.0), ("float16", 500.0), ("bfloat16", 0.0),
                                           ("bfloat16", 50.0)])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_half_precision_is_computed_in_float32(layout, dtype, offset):
    import jax.numpy as jnp

    (x, mean, variance, gamma, beta), axis = _data(layout, offset)
    xh = jnp.asarray(x).astype(dtype)
    y = _call(xh, mean, variance, gamma, beta, axis)
    assert y.dtype == xh.dtype
    with backends.disabled():
        general = np.asarray(_call(xh, mean, variance, gamma, beta, axis), np.float64)
    expected = _expected(np.asarray(xh, np.float64), mean, variance, gamma, beta, axis)
    tol = TOLERANCE[dtype] * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(y, np.float64), general, rtol=0, atol=tol)


def test_without_parameters_and_with_a_zero_variance_at_epsilon_zero():
    (x, mean, variance, _, _), axis = _data("nhwc", 1e4)
    variance[3] = 0.0
    x[..., 3] = mean[3]
    y = np.asarray(_call(x, mean, variance, None, None, axis, epsilon=0.0))
    with backends.disabled():
        general = np.asarray(_call(x, mean, variance, None, None, axis, epsilon=0.0))
    assert np.all(y[..., 3] == 0.0)
    np.testing.assert_allclose(y, general, rtol=0, atol=4e-6 * np.abs(general).max())


def test_gradients_match_the_general_path():
    import jax

    (x, mean, variance, gamma, beta), axis = _data("nchw", 1e4)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

    def loss(*args):
        return (_call(*args, axis) * dy).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, mean, variance, gamma, beta)
    with backends.disabled():
        want = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, mean, variance, gamma, beta)
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_declines_under_a_staged_trace():
    import jax

    from normlab.backends import jax as hooks

    (x, mean, variance, gamma, beta), axis = _data("nhwc", 0.0)
    served = []

    def probe(t):
        served.append(hooks.batch_norm_infer(t, axis=axis, mean=mean, variance=variance, gamma=gamma, beta=beta,
                                             epsilon=EPSILON) is not None)
        return _call(t, mean, variance, gamma, beta, axis)

    jitted = np.asarray(jax.jit(probe)(x))
    assert served == [False]
    np.testing.assert_allclose(jitted, np.asarray(_call(x, mean, variance, gamma, beta, axis)), rtol=0, atol=4e-6)
