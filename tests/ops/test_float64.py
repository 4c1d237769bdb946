"""Float64 data keeps float64's digits through every step (docs/concepts.md,
Numerics): statistics averaged over ghost batches, parameters and
statistics given as Python numbers or lists, and dynamic tanh's tanh. Each
of these was computed in float32 on some backend (a relative 1e-8 to 4e-2
off). On JAX the tests run under ``jax.enable_x64``."""

import keras
import numpy as np
import pytest
from keras import ops

from normlab import ops as nops

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def float64_arrays():
    if BACKEND != "jax":
        yield
        return
    import jax

    if not hasattr(jax, "enable_x64"):
        pytest.skip("this JAX has no jax.enable_x64 context")
    with jax.enable_x64(True):
        yield


def _f64(a):
    return ops.convert_to_tensor(np.asarray(a, "float64"), "float64")


def _np(t):
    y = ops.convert_to_numpy(t)
    assert y.dtype == np.float64
    return y


def test_ghost_batch_statistics_are_averaged_in_float64():
    """Keras' ``ops.mean`` reduces float64 in float32 on torch and JAX: the mean was 8e-5 off at 1e4."""
    x = 1e4 + np.random.default_rng(0).standard_normal((4, 3))
    _, mean, variance = nops.ghost_batch_norm(_f64(x), 2, return_stats=True)
    ghosts = x.reshape(2, 2, 3)
    np.testing.assert_allclose(_np(mean), ghosts.mean(axis=1).mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(_np(variance), ghosts.var(axis=1).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("given", ["number", "0-d array", "list"])
def test_numbers_and_lists_are_made_in_float64_for_float64_data(given):
    """They were made float32 tensors first: ``batch_norm`` with the mean
    10000.123456789 as a Python number was 3.9e-3 off (torch, TensorFlow)."""
    x = np.array([[10000.1234], [10001.5]])
    mean, variance, gamma = 10000.123456789, 0.01, 0.1
    wrap = {"number": float, "0-d array": np.float64, "list": lambda v: [v]}[given]  # one channel
    y = nops.batch_norm(_f64(x), wrap(mean), wrap(variance), gamma=wrap(gamma), epsilon=1e-3)
    np.testing.assert_allclose(_np(y), (x - mean) / np.sqrt(variance + 1e-3) * gamma, rtol=1e-12, atol=1e-15)
    rows = np.random.default_rng(1).standard_normal((2, 3))
    per_feature = {"number": float, "0-d array": np.float64, "list": lambda v: [v] * 3}[given]
    y = nops.layer_norm(_f64(rows), gamma=per_feature(0.1), beta=per_feature(0.3))
    centered = rows - rows.mean(axis=-1, keepdims=True)
    expected = centered / np.sqrt((centered**2).mean(axis=-1, keepdims=True) + 1e-3) * 0.1 + 0.3
    np.testing.assert_allclose(_np(y), expected, rtol=1e-14)


def test_dynamic_tanh_of_float64_data_is_float64():
    """Keras' JAX ``ops.tanh`` computes float64 data in float32 (5e-8 to 8e-8 off)."""
    x = np.random.default_rng(2).standard_normal((3, 5)) * 3
    y = nops.dynamic_tanh(_f64(x), alpha=0.5)
    np.testing.assert_allclose(_np(y), np.tanh(0.5 * x), rtol=1e-15, atol=1e-16)


def test_power_iteration_of_a_float64_kernel_is_float64():
    """Keras' torch ``ops.matmul`` returns float32 for float64 operands: sigma was 3.5e-9 off."""
    rng = np.random.default_rng(3)
    kernel, u0 = rng.standard_normal((6, 4)), rng.standard_normal((1, 4))

    def unit(a):
        return a / np.sqrt((a**2).sum())

    v = unit(unit(u0) @ kernel.T)
    u = unit(v @ kernel)
    sigma = float((v @ kernel * u).sum())
    w, new_u, got_sigma = nops.spectral_norm(_f64(kernel), _f64(u0), power_iterations=1)
    np.testing.assert_allclose(_np(got_sigma), sigma, rtol=1e-14)
    np.testing.assert_allclose(_np(w), kernel / sigma, rtol=1e-14)
    np.testing.assert_allclose(_np(new_u), u, rtol=1e-14, atol=1e-15)  # (a unit vector)
    for got, expected in zip(nops.power_iteration(_f64(kernel), _f64(u0), iterations=1), (u, v, sigma)):
        np.testing.assert_allclose(_np(got), expected, rtol=1e-14, atol=1e-15)


def test_float32_data_keeps_its_float32_statistics():
    """The policy's other half: numbers given for float32 data are float32, as before."""
    x = np.array([[10000.1234], [10001.5]], "float32")
    y = ops.convert_to_numpy(nops.batch_norm(x, 10000.123456789, 0.01, epsilon=1e-3))
    assert y.dtype == np.float32
    expected = (x.astype("float64") - np.float32(10000.123456789)) / np.sqrt(np.float32(0.01) + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5)
