"""Under ``jax.enable_x64`` the JAX fast paths keep float64 inputs in float64
(their compute dtype is float64, not float32): outputs, batch statistics and
gradients within 1e-9 of the float64 closed form at an offset of 1e6, where
float32 statistics and residuals would be 1e-2 off. Without x64 JAX has no
float64 arrays, and ``tests/backends/test_fast_paths.py`` skips these cases."""

from __future__ import annotations

import keras
import pytest

from tests.backends.test_fast_paths import _check

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's x64 mode")


@pytest.fixture(autouse=True)
def float64_arrays():
    import jax

    if not hasattr(jax, "enable_x64"):
        pytest.skip("this JAX has no jax.enable_x64 context")
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", ["rms-last", "rms-first", "ln-last", "ln-split", "gn-nhwc", "in-nchw", "bn-nhwc",
                                  "bn-nchw"])
def test_float64_inputs_are_computed_in_float64(case, affine):
    _check(case, "float64", 1e6, affine=affine, mode="jit")


@pytest.mark.parametrize("case", ["ln-last", "gn-nhwc", "bn-nhwc"])
def test_float64_far_outlier_first_in_every_slice(case):
    _check(case, "float64", 1e6, mode="jit", outlier=1e4)
