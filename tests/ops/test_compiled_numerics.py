"""The general path, compiled (jax.jit; tf.function with XLA), is as exact as eager.

XLA recomputes cheap elementwise producers inside each fusion that consumes
them, and contracts ``a - b * c`` into a fused multiply-add in some fusions and
not in others. A shift computed near the data's offset (a mean) would then
differ between the forward residuals and the backward's recomputed ones by an
ulp of the offset: at 1e6, LayerNorm's gamma gradient over a non-trailing axis
was off by 3% under ``jax.jit``. These tests pin the gradients of the general
path (fast paths off), compiled, against float64 at offsets 1e4 and 1e6.
"""

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

BACKEND = keras.backend.backend()
EPSILON = 1e-3

pytestmark = pytest.mark.skipif(BACKEND == "torch", reason="eager torch has no fusing compiler here")

# name: (shape, op(x, gamma, beta), normalized axes of the grouped view, grouped view, param axes)
CASES = {
    "layer-axis1": ((3, 7, 16), lambda x, g, b: nops.layer_norm(x, 1, gamma=g, beta=b, epsilon=EPSILON),
                    (3, 7, 16), (1,), (1,)),
    "layer-axes13": ((2, 5, 3, 8), lambda x, g, b: nops.layer_norm(x, [1, 3], gamma=g, beta=b, epsilon=EPSILON),
                     (2, 5, 3, 8), (1, 3), (1, 3)),
    "group-channels-first": ((3, 6, 4, 5), lambda x, g, b: nops.group_norm(x, 3, 1, gamma=g, beta=b, epsilon=EPSILON),
                             (3, 3, 2, 20), (2, 3), (1,)),
}


def _reference(x, dy, gamma, view, axes, param_axes):
    """float64 output-independent gradients: (dx, dgamma, dbeta) of sum(dy * y)."""
    shape = x.shape
    pshape = tuple(shape[a] if a in param_axes else 1 for a in range(len(shape)))
    g = (dy * gamma.reshape(pshape)).reshape(view)
    xv = x.reshape(view)
    mean = xv.mean(axes, keepdims=True)
    rstd = 1.0 / np.sqrt(xv.var(axes, keepdims=True) + EPSILON)
    xhat = (xv - mean) * rstd
    dx = rstd * (g - g.mean(axes, keepdims=True) - xhat * (g * xhat).mean(axes, keepdims=True))
    others = tuple(a for a in range(len(shape)) if a not in param_axes)
    dgamma = (dy * xhat.reshape(shape)).sum(others)
    dbeta = dy.sum(others)
    return dx.reshape(shape), dgamma, dbeta


def _compiled_gradients(op, x, gamma, beta, dy):
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x, g, b):
            return jnp.sum(op(x, g, b) * dy)

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, gamma, beta)
        return [np.asarray(t, np.float64) for t in grads]
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def grads(x, g, b):
        with tf.GradientTape() as tape:
            tape.watch([x, g, b])
            loss = tf.reduce_sum(op(x, g, b) * dy)
        return tape.gradient(loss, [x, g, b])

    return [t.numpy().astype(np.float64) for t in grads(tf.constant(x), tf.constant(gamma), tf.constant(beta))]


@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("case", sorted(CASES))
def test_general_path_gradients_compiled_match_float64(case, offset):
    shape, op, view, axes, param_axes = CASES[case]
    rng = np.random.default_rng(0)
    x = (offset + rng.normal(0.5, 2.0, size=shape)).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    pshape = tuple(shape[a] for a in param_axes)
    gamma = rng.uniform(0.5, 1.5, size=pshape).astype("float32")
    beta = rng.normal(size=pshape).astype("float32")
    with backends.disabled():
        dx, dgamma, dbeta = _compiled_gradients(op, x, gamma, beta, dy)
    ref = _reference(x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64),
                     view, axes, param_axes)
    for got, want, name in zip((dx, dgamma, dbeta), ref, ("dx", "dgamma", "dbeta")):
        scale = np.abs(want).max()
        assert np.abs(got.reshape(want.shape) - want).max() <= 2e-5 * scale, (name, case, offset)
