"""normlab.ops.weights: epsilon's place of the unit vectors (TF's l2_normalize: a floor,
not an addend) and the gradient of spectral_norm with u and v held constant (Miyato et al.)."""

import numpy as np
from keras import ops

from normlab.ops.weights import power_iteration, spectral_norm
from normlab.testing.autodiff import gradients


def test_unit_vectors_floor_the_squared_norm_at_epsilon():
    """``unit(x) = x / sqrt(max(sum(x**2), epsilon))``: a vector whose squared norm (1e-14)
    is below epsilon (1e-12) is divided by sqrt(epsilon) exactly, giving 0.1, not
    x / sqrt(sum + epsilon) (0.0995)."""
    u0 = np.array([[1e-7, 0.0]], "float32")
    u, v, sigma = power_iteration(np.eye(2, dtype="float32"), u0, iterations=0, epsilon=1e-12)
    np.testing.assert_allclose(ops.convert_to_numpy(u), [[0.1, 0.0]], rtol=1e-5)
    # v = unit(u W^T) = unit([[0.1, 0]]) = [[1, 0]]; sigma = v W u^T = 0.1
    np.testing.assert_allclose(ops.convert_to_numpy(v), [[1.0, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(float(ops.convert_to_numpy(sigma)), 0.1, rtol=1e-5)


def test_spectral_norm_gradient_holds_u_and_v_constant():
    """The kernel's gradient through ``W / sigma`` with ``sigma = v W u^T`` and ``u``, ``v``
    constants (no gradient through the power iteration):
    ``dW = dy / sigma - sum(dy * W) / sigma**2 * v^T u``, in float64 NumPy."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(5, 3)).astype("float32")
    u0 = rng.normal(size=(1, 3)).astype("float32")
    dy = rng.normal(size=(5, 3)).astype("float32")
    (got,) = gradients(lambda k: spectral_norm(k, u0, power_iterations=1)[0], [kernel], dy)

    w = kernel.astype("float64")
    unit = lambda t: t / np.sqrt(max(np.sum(t * t), 1e-12))  # noqa: E731
    u = unit(u0.astype("float64"))
    v = unit(u @ w.T)
    u = unit(v @ w)
    sigma = float((v @ w @ u.T)[0, 0])
    expected = dy / sigma - np.sum(dy * w) / sigma**2 * (v.T @ u)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
