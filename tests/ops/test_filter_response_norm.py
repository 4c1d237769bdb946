"""normlab.ops.filter_response_norm and tlu against the float64 references."""

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


@pytest.mark.parametrize(
    "shape, axis",
    [(LAST4, -1), (FIRST3, 1), (FIRST3, -1), (LAST5, -1), (LAST5, 1), (FLAT, -1)],
)
def test_filter_response_norm_matches_reference(shape, axis):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    gamma, beta, tau = per_channel(c, 1), per_channel(c, 2, -1, 1), per_channel(c, 3, -0.5, 0.5)
    y = to_np(call(nops.filter_response_norm, x, axis=axis, gamma=gamma, beta=beta, epsilon=1e-6,
                   learned_epsilon=np.array([-0.01], "float32"), tau=tau))
    expected = reference.filter_response_norm(x, axis, gamma, beta, 1e-6, learned_epsilon=0.01, tau=tau)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_filter_response_norm_tfa_axis_list_names_the_spatial_axes():
    x = rng_normal(LAST4)
    np.testing.assert_allclose(to_np(nops.filter_response_norm(x, axis=[1, 2])),
                               to_np(nops.filter_response_norm(x, axis=-1)), atol=1e-6)
    nchw = np.transpose(x, (0, 3, 1, 2))
    np.testing.assert_allclose(to_np(nops.filter_response_norm(nchw, axis=[2, 3])),
                               np.transpose(to_np(nops.filter_response_norm(x)), (0, 3, 1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected as a list, the spatial axes.*"
                                         r"Received: axis=\[1, 2\] for an input of rank 5, which leaves axes \[3, 4\]\. "
                                         r"Pass the channel axis as an int"):
        nops.filter_response_norm(rng_normal(LAST5), axis=[1, 2])


def test_tlu_plain_and_affine():
    x = rng_normal(FIRST3)
    tau, alpha = per_channel(5, 1, -1, 1), per_channel(5, 2, 0, 0.5)
    np.testing.assert_allclose(to_np(nops.tlu(x, tau)), reference.tlu(x, tau), atol=0)
    np.testing.assert_allclose(to_np(nops.tlu(x, tau, -1, alpha=alpha)), reference.tlu(x, tau, -1, alpha), atol=1e-6)
    tau1 = per_channel(6, 3, -1, 1)
    np.testing.assert_allclose(to_np(nops.tlu(x, tau1, axis=1)), reference.tlu(x, tau1, axis=1))
    with pytest.raises(ValueError, match=r"Invalid `tau`: expected a tensor of shape \(5,\).*Received: tau.shape=\(4,\)"):
        nops.tlu(x, np.zeros(4, "float32"))


@pytest.mark.parametrize("shape", [(4,), (2, 1)])
def test_learned_epsilon_is_one_value(shape):
    """A per-channel tensor failed in a backend reshape with no word of what was wrong."""
    x = np.ones((2, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match="a single learned epsilon"):
        nops.filter_response_norm(x, learned_epsilon=np.full(shape, 1e-4, "float32"))
    nops.filter_response_norm(x, learned_epsilon=np.full((1,), 1e-4, "float32"))  # () and (1,) are taken


def test_learned_epsilon_may_be_a_scalar():
    """A scalar learned epsilon is taken as the (1,) one: its absolute value joins epsilon."""
    x = rng_normal(LAST4)
    one = to_np(nops.filter_response_norm(x, learned_epsilon=np.array([-0.5], "float32")))
    scalar = to_np(nops.filter_response_norm(x, learned_epsilon=np.array(-0.5, "float32")))
    np.testing.assert_array_equal(scalar, one)
    np.testing.assert_allclose(scalar, reference.filter_response_norm(x, -1, epsilon=1e-6, learned_epsilon=0.5),
                               rtol=1e-5, atol=1e-6)
