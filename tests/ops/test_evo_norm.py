"""normlab.ops.evo_norm: EvoNorm-B0 and S0 against the float64 references."""

import numpy as np
import pytest

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import (
    FIRST3,
    FLAT,
    LAST4,
    LAST5,
    call,
    per_channel,
    rng_normal,
    to_np,
)


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1), (LAST5, -1)])
@pytest.mark.parametrize("training", [True, False])
def test_evo_norm_b0_matches_reference(shape, axis, training):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    v, gamma, beta = per_channel(c, 1, -1, 1), per_channel(c, 2), per_channel(c, 3, -1, 1)
    moving = None if training else per_channel(c, 4, 1, 5)
    y, var = call(nops.evo_norm_b0, x, v=v, moving_variance=moving, axis=axis, gamma=gamma, beta=beta,
                  epsilon=1e-3, training=training, return_stats=True)
    expected, expected_var = reference.evo_norm_b0(x, axis, v, gamma, beta, 1e-3, moving)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(var), expected_var, rtol=1e-5)


@pytest.mark.parametrize("shape, groups, axis", [(LAST4, 3, -1), (FIRST3, -1, 1), (LAST5, 1, -1), (FLAT, 2, -1)])
def test_evo_norm_s0_matches_reference(shape, groups, axis):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    v, gamma, beta = per_channel(c, 1, -1, 1), per_channel(c, 2), per_channel(c, 3, -1, 1)
    y = call(nops.evo_norm_s0, x, v=v, groups=groups, axis=axis, gamma=gamma, beta=beta, epsilon=1e-5)
    np.testing.assert_allclose(to_np(y), reference.evo_norm_s0(x, groups, axis, v, gamma, beta, 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_evo_norm_errors():
    with pytest.raises(ValueError, match=r"Invalid `x`: expected an input of rank >= 3.*EvoNorm-B0.*"
                                         r"Received: x.shape=\(4, 3\)\. Add a spatial axis"):
        nops.evo_norm_b0(rng_normal((4, 3)), training=True)
    with pytest.raises(ValueError, match=r"Invalid `moving_variance`: .*Received: moving_variance=None, training=False"):
        nops.evo_norm_b0(rng_normal((4, 3, 3)))
    with pytest.raises(ValueError, match=r"Invalid `groups`: expected a divisor of the number of channels \(6\).*"
                                         r"Received: groups=4 with 6 channels"):
        nops.evo_norm_s0(rng_normal((2, 3, 6)), groups=4)
    # one channel per group on (batch, features): every variance 0, x * sigmoid(v x) / sqrt(eps) (up to 344)
    with pytest.raises(ValueError, match=r"Invalid `x`: expected an input of rank >= 3.*EvoNorm-S0 with one "
                                         r"channel per group.*Received: x.shape=\(4, 6\)"):
        nops.evo_norm_s0(rng_normal((4, 6)), groups=-1)
    assert tuple(nops.evo_norm_s0(rng_normal((4, 6)), groups=2).shape) == (4, 6)


@pytest.mark.parametrize("training", [True, False])
def test_evo_norm_b0_refuses_zero_epsilon(training):
    """It divides the uncentered input by a standard deviation: a constant slice would give
    inf or NaN. The op refuses 0 as EvoNorm-S0 does (the layers check it too)."""
    x = np.ones((2, 3, 3, 2), "float32")  # constant slices: var 0 everywhere
    moving = None if training else np.zeros(2, "float32")
    with pytest.raises(ValueError, match=r"epsilon"):
        nops.evo_norm_b0(x, moving_variance=moving, epsilon=0.0, training=training)
    with pytest.raises(ValueError, match=r"epsilon"):
        nops.evo_norm_s0(x, groups=1, epsilon=0.0)
