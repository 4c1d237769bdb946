"""Eager JAX calls of the fast paths reuse one compilation per shape.

Outside ``jax.jit`` the hooks run under their own cached ``jax.jit``: their
``lax.cond`` branches are fresh closures on every call, which eager JAX
traced and compiled again each time (eight compilations and about 130 ms
per call of a (2, 8, 8, 16) group norm, against 0.5 ms for Keras' own
layer). A second call with the same shapes must compile nothing.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

import normlab
from tests.backends.test_fast_paths import CASES, _apply, _inputs

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="eager JAX")


class _Compilations(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "ompil" in message:
            self.messages.append(message)


def _compilations(fn):
    """The compilations JAX logs while ``fn()`` runs."""
    import jax

    handler = _Compilations()
    logger = logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            jax.block_until_ready(fn())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.messages


@pytest.mark.parametrize("case", ["gn-nhwc", "gn-nchw", "ln-last", "ln-split", "bn-nhwc", "rms-last2"])
def test_a_repeated_eager_op_call_compiles_nothing(case):
    import jax.numpy as jnp

    x, _, gamma, beta = (jnp.asarray(a, "float32") for a in _inputs(case, 0.0))
    jax_call = lambda: _apply(case, x, gamma, beta)[0]  # noqa: E731
    jax_call()
    assert _compilations(jax_call) == [], CASES[case]


@pytest.mark.parametrize("make", [
    lambda: normlab.GroupNormalization(groups=4),
    lambda: normlab.InstanceNormalization(),
    lambda: normlab.LayerNormalization(),
    lambda: normlab.BatchNormalization(),
], ids=["group", "instance", "layer", "batch"])
@pytest.mark.parametrize("training", [False, True])
def test_a_repeated_eager_layer_call_compiles_nothing(make, training):
    layer = make()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    layer(x, training=training)
    assert _compilations(lambda: layer(x, training=training)) == []
