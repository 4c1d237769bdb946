"""Shapes and helpers shared by the op tests."""

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()

# A small pool of shapes shared by the tests: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC
FLAT = (4, 6)


def call(op, x, **kwargs):
    """``op(x, **kwargs)``; on JAX under ``jax.jit``, one XLA compile instead of one per primitive."""
    if BACKEND == "jax":
        import jax

        return jax.jit(lambda t: op(t, **kwargs))(x)
    return op(x, **kwargs)


def jax_x64():
    import jax

    return bool(jax.config.jax_enable_x64)


def rng_normal(shape, loc=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype("float32")


def to_np(t):
    return ops.convert_to_numpy(ops.cast(t, "float32")) if keras.backend.standardize_dtype(t.dtype) in (
        "float16", "bfloat16") else ops.convert_to_numpy(t)


def per_channel(channels, seed, low=0.5, high=1.5):
    return np.random.default_rng(seed).uniform(low, high, size=channels).astype("float32")
