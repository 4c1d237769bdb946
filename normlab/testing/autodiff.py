"""Gradients on whichever Keras backend is active, and float64 finite differences.

Tests use these to check that every op's gradient (through the general path
or a backend fast path) agrees with the float64 reference.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np


def gradients(fn: Callable[..., Any], args: Sequence[np.ndarray], cotangent: np.ndarray) -> list[np.ndarray]:
    """Gradients of ``sum(fn(*args) * cotangent)`` w.r.t. every arg, as NumPy arrays
    (zeros for an arg the output does not depend on, on every backend)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def objective(*a: Any) -> Any:
            return jnp.sum(fn(*a).astype("float32") * cotangent)

        grads = jax.grad(objective, argnums=tuple(range(len(args))))(*[jnp.asarray(a) for a in args])
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(fn(*tensors), "float32") * cotangent)
        return [g.numpy() for g in tape.gradient(loss, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO)]
    if backend == "torch":
        import torch

        device = keras.ops.zeros(()).device  # Keras' device (a GPU's where there is one)
        tensors = [torch.tensor(a, requires_grad=True, device=device) for a in args]
        out = fn(*tensors).float()
        (out * torch.as_tensor(cotangent, device=out.device)).sum().backward()
        return [np.zeros_like(a) if t.grad is None else t.grad.cpu().numpy() for a, t in zip(args, tensors)]
    raise NotImplementedError(f"gradients() does not support the {backend!r} backend")


def finite_differences(
    fn: Callable[..., Any], args: Sequence[np.ndarray], cotangent: np.ndarray, step: float = 1e-6
) -> list[np.ndarray]:
    """Central finite differences of ``sum(fn(*args) * cotangent)`` in float64."""
    args = [np.array(a, dtype=np.float64) for a in args]
    grads = []
    for i, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for index in np.ndindex(arg.shape):
            saved = arg[index]
            arg[index] = saved + step
            plus = np.sum(fn(*args) * cotangent)
            arg[index] = saved - step
            minus = np.sum(fn(*args) * cotangent)
            arg[index] = saved
            grad[index] = (plus - minus) / (2 * step)
        grads.append(grad)
    return grads
