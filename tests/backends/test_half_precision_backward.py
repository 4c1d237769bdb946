"""The closed-form backward of the JAX and TensorFlow fast paths for float16
and bfloat16 inputs with float32 parameters: the gradients are computed in
float32 from the rounded input and cotangent, so ``dx`` is rounded once to
the input's dtype (within one of its spacings of the float64 closed form),
and the parameter gradients keep the parameters' float32 accuracy: they are
never rounded through the input's dtype (a float16 ``dbeta`` is up to 2.4e-4
off, a bfloat16 one 2e-3)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.backends._closed_form import normalize_and_vjp
from tests.backends.test_fast_paths import CASES, EPSILON, _inputs, _np, _run, _tensor

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"),
                                reason="the JAX and TensorFlow hooks' closed-form backward")

CASES_SERVED = {
    "jax": ["rms-last", "rms-last2", "rms-first", "ln-last", "ln-last2", "ln-split", "ln-first", "gn-nhwc",
            "gn-nchw", "in-nchw", "bn-nhwc", "bn-nchw"],
    "tensorflow": ["rms-last", "rms-last2", "ln-last", "ln-last2", "ln-split", "gn-nhwc", "gn-nchw", "in-nchw",
                   "bn-nhwc", "bn-nchw"],
}.get(BACKEND, [])
#: The modes the hooks serve every case in: TensorFlow's layer norm over
#: non-trailing axes declines in a graph outside XLA.
MODES_SERVED = {"jax": ["jit"], "tensorflow": ["eager", "xla"]}.get(BACKEND, [])
SPACING = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # between 1 and 2


def _gradients(case, dtype, mode, affine):
    x_np, dy_np, gamma_np, beta_np = _inputs(case, 0.0, seed=4)
    x, dy = _tensor(x_np, dtype), _tensor(dy_np, dtype)  # the cotangent has the output's dtype
    gamma = _tensor(gamma_np, "float32") if affine else None
    beta = _tensor(beta_np, "float32") if affine else None
    got = _run(case, x, dy, gamma, beta, mode)
    op, _, axis, groups = CASES[case]
    want = normalize_and_vjp(_np(x), _np(dy), op, axis, groups=groups, gamma=gamma_np if affine else None,
                             beta=beta_np if affine else None, epsilon=EPSILON)
    return got, want


@pytest.mark.parametrize("mode", MODES_SERVED)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES_SERVED)
def test_parameter_gradients_of_half_precision_inputs_are_float32_accurate(case, dtype, mode):
    got, want = _gradients(case, dtype, mode, affine=True)
    for name in ("dgamma", "dbeta"):
        scale = max(1.0, float(np.max(np.abs(want[name]))))
        error = float(np.max(np.abs(got[name] - want[name])))
        assert error <= 1e-5 * scale, f"{case} {dtype} {mode}: {name} off by {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("mode", MODES_SERVED)
@pytest.mark.parametrize("dtype, affine", [("float16", True), ("bfloat16", True), ("float16", False)])
@pytest.mark.parametrize("case", CASES_SERVED)
def test_dx_of_half_precision_inputs_is_rounded_once(case, dtype, affine, mode):
    got, want = _gradients(case, dtype, mode, affine)
    allowed = SPACING[dtype] * np.maximum(2.0 ** np.floor(np.log2(np.maximum(np.abs(want["dx"]), 2.0**-14))),
                                          2.0**-6)
    excess = float(np.max(np.abs(got["dx"] - want["dx"]) / allowed))
    assert excess <= 1.0, f"{case} {dtype} {mode} affine={affine}: dx {excess:.2f} spacings off"
