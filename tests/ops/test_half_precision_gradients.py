"""The general path's gradients for float16 and bfloat16 inputs (fast paths
off), on every backend: ``dx`` is rounded once to the input's dtype, within
one of its spacings of the float64 closed form, as the fast paths' are.

The statistics and the apply step both read ``x``; where each cast it to
float32 by itself, autodiff rounded each of the two gradient terms (which
largely cancel) to half precision before adding them: 2 to 22 spacings off.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops
from tests.backends._closed_form import normalize_and_vjp
from tests.backends.test_fast_paths import CASES, EPSILON, _inputs, _np, _run, _tensor

MODE = {"jax": "jit", "tensorflow": "eager", "torch": "eager"}[keras.backend.backend()]
SPACING = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # between 1 and 2
CASES_CHECKED = ["rms-last", "ln-last", "ln-first", "gn-nhwc", "gn-nchw", "in-nchw", "bn-nhwc", "bn-nchw"]


@pytest.mark.parametrize("dtype, affine", [("float16", True), ("bfloat16", True), ("float16", False)])
@pytest.mark.parametrize("case", CASES_CHECKED)
def test_general_path_dx_of_half_precision_inputs_is_rounded_once(case, dtype, affine):
    x_np, dy_np, gamma_np, beta_np = _inputs(case, 0.0, seed=4)
    x, dy = _tensor(x_np, dtype), _tensor(dy_np, dtype)
    gamma = _tensor(gamma_np, "float32") if affine else None
    beta = _tensor(beta_np, "float32") if affine else None
    with backends.disabled():
        got = _run(case, x, dy, gamma, beta, MODE)
    op, _, axis, groups = CASES[case]
    want = normalize_and_vjp(_np(x), _np(dy), op, axis, groups=groups, gamma=gamma_np if affine else None,
                             beta=beta_np if affine else None, epsilon=EPSILON)
    allowed = SPACING[dtype] * np.maximum(2.0 ** np.floor(np.log2(np.maximum(np.abs(want["dx"]), 2.0**-14))),
                                          2.0**-6)
    excess = float(np.max(np.abs(got["dx"] - want["dx"]) / allowed))
    assert excess <= 1.0, f"{case} {dtype} affine={affine}: dx {excess:.2f} spacings off"
    if affine:
        for name in ("dgamma", "dbeta"):
            scale = max(1.0, float(np.max(np.abs(want[name]))))
            error = float(np.max(np.abs(got[name] - want[name])))
            assert error <= 1e-5 * scale, f"{case} {dtype}: {name} off by {error:.3g}"


def _vjp(fn, x, dy):
    """``dx`` of ``fn`` at ``x`` for the cotangent ``dy`` (both of x's dtype), as float64 NumPy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return _np(tape.gradient(y, x, output_gradients=dy))
    if backend == "jax":
        import jax

        _, pullback = jax.vjp(fn, x)
        return _np(pullback(dy)[0])
    x = x.detach().requires_grad_(True)
    fn(x).backward(dy)
    return _np(x.grad)


ZOO = {
    "switchable": lambda x: nops.switchable_norm(x, np.array([0.2, 0.5, 0.3], "float32"),
                                                 np.array([0.4, 0.1, 0.5], "float32"), training=True, epsilon=1e-3),
    "adaptive_instance": lambda x: nops.adaptive_instance_norm(x, STYLE, epsilon=1e-3),
    "evonorm_b0": lambda x: nops.evo_norm_b0(x, training=True, epsilon=1e-3),
    "evonorm_s0": lambda x: nops.evo_norm_s0(x, groups=2, epsilon=1e-3),
    "filter_response": lambda x: nops.filter_response_norm(x, epsilon=1e-3),
    "standardize_weight": lambda w: nops.standardize_weight(w, epsilon=1e-3),  # a (2, 5, 6, 4) kernel: 60 inputs per output
}
STYLE = np.random.default_rng(7).normal(1.0, 3.0, (2, 5, 6, 4)).astype("float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_dx_of_half_precision_inputs_is_the_float32_one_rounded_once(name, dtype):
    """Against the same op on the same (rounded) values in float32, whose
    gradient is some 1e-7 relative off exact: within one spacing."""
    rng = np.random.default_rng(5)
    x = _tensor(rng.normal(0.5, 2.0, (2, 5, 6, 4)), dtype)
    dy = _tensor(rng.normal(size=(2, 5, 6, 4)), dtype)
    got = _vjp(ZOO[name], x, dy)
    want = _vjp(ZOO[name], _tensor(_np(x), "float32"), _tensor(_np(dy), "float32"))
    allowed = SPACING[dtype] * np.maximum(2.0 ** np.floor(np.log2(np.maximum(np.abs(want), 2.0**-14))), 2.0**-6)
    excess = float(np.max(np.abs(got - want) / allowed))
    assert excess <= 1.0, f"{name} {dtype}: dx {excess:.2f} spacings off the float32 gradient"
