"""Every op beyond the classic four keeps its input's dtype and computes in float32."""

import keras
import numpy as np
import pytest
from keras import ops

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import BACKEND, FIRST3, LAST4, call, jax_x64, rng_normal, to_np


def _half_cases():
    x = rng_normal(LAST4, 0.5, 2.0)
    ones = np.ones(6, "float32")
    return {
        "rms_norm": (lambda t: nops.rms_norm(t), lambda a: reference.rms_norm(a)),
        "filter_response_norm": (lambda t: nops.filter_response_norm(t, tau=-ones),
                                 lambda a: reference.filter_response_norm(a, tau=-ones)),
        "evo_norm_b0": (lambda t: nops.evo_norm_b0(t, training=True), lambda a: reference.evo_norm_b0(a)[0]),
        "evo_norm_s0": (lambda t: nops.evo_norm_s0(t, groups=2), lambda a: reference.evo_norm_s0(a, 2)),
        "switchable_norm": (lambda t: nops.switchable_norm(t, ones[:3], ones[:3], training=True),
                            lambda a: reference.switchable_norm(a, ones[:3], ones[:3])[0]),
        "local_response_norm": (lambda t: nops.local_response_norm(t, alpha=1.0),
                                lambda a: reference.local_response_norm(a, alpha=1.0)),
        "batch_renorm": (lambda t: nops.batch_renorm(t, ones * 0, ones, virtual_batch_size=2),
                         lambda a: reference.batch_renorm(a, ones * 0, ones, virtual_batch_size=2)[0]),
    }, x


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 4e-2), ("float64", 1e-10)])
@pytest.mark.parametrize("name", sorted(_half_cases()[0]))
def test_dtypes_are_kept_and_statistics_run_in_float32(name, dtype, tol):
    if dtype == "float64" and BACKEND == "jax" and not jax_x64():
        pytest.skip("JAX without jax_enable_x64 has no float64")
    if dtype == "float64" and BACKEND == "torch" and name not in ("rms_norm", "local_response_norm"):
        tol = 1e-6  # Keras' torch backend runs mean, maximum, ... of float64 tensors in float32
    cases, x = _half_cases()
    op, ref = cases[name]
    t = ops.cast(x, dtype)
    y = call(op, t)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    rounded = to_np(t).astype("float64") if dtype != "float64" else x.astype("float64")
    np.testing.assert_allclose(to_np(y).astype("float64"), ref(rounded), rtol=tol, atol=tol)


def test_half_precision_squares_do_not_overflow():
    x = ops.cast(rng_normal(FIRST3, 0.0, 300.0), "float16")  # x^2 > 65504, the float16 maximum
    for y in (nops.rms_norm(x), nops.filter_response_norm(x), nops.local_response_norm(x, alpha=1.0)):
        assert np.isfinite(to_np(y)).all()
    np.testing.assert_allclose(to_np(nops.rms_norm(x)), reference.rms_norm(to_np(x)), rtol=1e-2, atol=1e-2)
