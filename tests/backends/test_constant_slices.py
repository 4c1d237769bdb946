"""A constant slice at a large offset normalizes to ``beta`` exactly, at any
``epsilon``, on every fast path.

Its variance is 0, so ``1 / sqrt(variance + epsilon)`` is as large as
``epsilon`` is small, and any residual a fast path leaves in ``x - mean`` is
multiplied by it. The residual vanishes only where the slice's shift is its
value to the last bit: a subsample mean summed in float32 missed it by
several units of its last place at 1e6, which left ``beta`` off by up to
1.7e-3 at ``epsilon=1e-12`` on ATen's kernels (torch without normlab's compiled
kernels) and 2.4e-4 at ``epsilon=1e-9`` in the compiled layer-norm kernel.
TensorFlow's hooks missed it alike in a training step's small inputs (5.5e-3
off at 1e-12). The general path is exact here by construction (a sample shift).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from normlab import ops as nops

BACKEND = keras.backend.backend()

#: name: (op, shape); sample 0 (batch norm: channel 0) is constant.
CASES = {
    "ln-rows": ("layer", (3, 6400)),
    "ln-last": ("layer", (4, 9, 9, 8)),
    "gn-nhwc": ("group", (17, 13, 2, 8, 8)),
    "gn-nchw": ("group-first", (3, 64, 100)),
    "in-nhwc": ("instance", (2, 40, 40, 16)),
    "bn-nhwc": ("batch", (3, 100, 64)),
    "bn-nchw": ("batch-first", (4, 8, 9, 9)),
}

#: dtype and the constant: float32 values at 1e6 (spacing 1/16) and 1e4,
#: float16 at 1000 (spacing 1/2).
VALUES = [("float32", 1e6 + 0.5), ("float32", 1e4 + 0.37), ("float16", 1000.5)]


def _apply(op, x, beta, epsilon):
    if op == "layer":
        return nops.layer_norm(x, beta=beta, epsilon=epsilon)
    if op == "group":
        return nops.group_norm(x, x.shape[-1] // 2, -1, beta=beta, epsilon=epsilon)
    if op == "group-first":
        return nops.group_norm(x, x.shape[1] // 4, 1, beta=beta, epsilon=epsilon)
    if op == "instance":
        return nops.instance_norm(x, -1, beta=beta, epsilon=epsilon)
    axis = 1 if op == "batch-first" else -1
    return nops.batch_norm(x, axis=axis, beta=beta, epsilon=epsilon, training=True)


def _channel_axis(op):
    return 1 if op.endswith("-first") else -1


def _inputs(op, shape, dtype, value):
    rng = np.random.default_rng(0)
    x = value + 10.0 * rng.standard_normal(shape)
    x[_constant_part(op)] = value
    beta = rng.uniform(-2.0, 2.0, shape[_channel_axis(op)]).astype("float32")
    return x.astype(dtype), beta


def _constant_part(op):
    """The index of the constant part: sample 0, or for batch norm channel 0."""
    if not op.startswith("batch"):
        return (0,)
    return (slice(None), 0) if _channel_axis(op) == 1 else (Ellipsis, 0)


def _expected(op, beta, shape, dtype):
    """``beta`` (rounded to ``dtype``) at every position of the constant part."""
    b = beta.astype(dtype).astype("float64")
    if op.startswith("batch"):
        return np.full(np.empty(shape)[_constant_part(op)].shape, b[0])
    if _channel_axis(op) == 1:  # channels first of each sample
        b = b.reshape((-1,) + (1,) * (len(shape) - 2))
    return np.broadcast_to(b, shape[1:])


def _recorded(fn, x):
    """``fn(x)`` as a training step calls it: recorded for the gradient."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            return fn(x)
    if BACKEND == "torch":
        return fn(x.clone().requires_grad_(True)).detach()
    import jax

    return jax.vjp(fn, x)[0]


def _check(case, dtype, value, recorded=False):
    op, shape = CASES[case]
    x, beta = _inputs(op, shape, dtype, value)
    for epsilon in (1e-12, 1e-9):  # the smallest amplify a residual most (larger ones passed as these did)
        def fn(t):
            return _apply(op, t, beta, epsilon)

        xt = ops.convert_to_tensor(x)
        y = ops.convert_to_numpy(_recorded(fn, xt) if recorded else fn(xt)).astype("float64")
        got = y[_constant_part(op)]
        np.testing.assert_allclose(got, _expected(op, beta, shape, dtype), rtol=0, atol=1e-6,
                                   err_msg=f"{case} {dtype} at {value}, epsilon {epsilon}")


@pytest.mark.parametrize("recorded", [False, True], ids=["inference", "recorded"])
@pytest.mark.parametrize("dtype,value", VALUES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_constant_slice_gives_beta(case, dtype, value, recorded):
    """Recorded: as in a training step (TensorFlow's hooks then take small
    inputs' statistics about a subsample mean; torch's run their autograd Functions)."""
    _check(case, dtype, value, recorded)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's ATen kernels")
@pytest.mark.parametrize("recorded", [False, True], ids=["inference", "recorded"])
@pytest.mark.parametrize("dtype,value", VALUES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_constant_slice_gives_beta_on_aten_kernels(case, dtype, value, recorded, monkeypatch):
    """torch without normlab's compiled kernels (no compiler, or ``NORMLAB_CPU_KERNELS=0``)."""
    from normlab.backends import cpu

    monkeypatch.setenv("NORMLAB_CPU_KERNELS", "0")
    assert cpu.library() is None
    _check(case, dtype, value, recorded)
