"""normlab.ops.local_response_norm against the float64 reference and torch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import FIRST3, FLAT, LAST4, LAST5, call, rng_normal, to_np


@pytest.mark.parametrize(
    "shape, size, axis", [(LAST4, 5, -1), (FIRST3, 3, 1), (LAST5, 4, -1), (FLAT, 1, -1), (FIRST3, 8, 1)]
)
def test_local_response_norm_matches_reference(shape, size, axis):
    x = rng_normal(shape, 0.0, 3.0)
    y = call(nops.local_response_norm, x, size=size, alpha=0.5, beta=0.75, k=2.0, axis=axis)
    np.testing.assert_allclose(to_np(y), reference.local_response_norm(x, size, 0.5, 0.75, 2.0, axis),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("size", [12, 13, 10**6])
def test_a_window_wider_than_the_channels_sums_them_all(channels, size):
    """A window reaches channels - 1 to either side at most: the op made one slice per position of a window of
    10**6 (minutes), and gives the reference's values at any width, bit for bit those of a window just wide
    enough (alpha / size aside)."""
    x = rng_normal((2, 3, channels), 0.0, 3.0)
    y = call(nops.local_response_norm, x, size=size, alpha=0.5 * size, beta=0.75, k=2.0)
    np.testing.assert_allclose(to_np(y), reference.local_response_norm(x, size, 0.5 * size, 0.75, 2.0),
                               rtol=1e-5, atol=1e-6)
    wide = 2 * channels + 1 + size % 2
    np.testing.assert_array_equal(to_np(y), to_np(call(nops.local_response_norm, x, size=wide, alpha=0.5 * wide,
                                                      beta=0.75, k=2.0)))


@pytest.mark.parametrize("shape, size", [(FIRST3, 3), (FIRST3, 6), (LAST4, 5), (LAST5, 2)])  # channels on axis 1
def test_local_response_norm_matches_torch(shape, size):
    torch = pytest.importorskip("torch")
    x = rng_normal(shape, 0.0, 3.0)
    expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha=0.3, beta=0.6, k=1.5).numpy()
    y = call(nops.local_response_norm, x, size=size, alpha=0.3, beta=0.6, k=1.5, axis=1)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(size=0), ValueError, r"Invalid `size`: expected a positive integer \(the number of channels in the window\)\. "
                                   r"Received: size=0\. Pass an int such as size=5"),
        (dict(size=2.5), ValueError, r"Received: size=2\.5"),
        (dict(k=0.0), ValueError, r"Invalid `k`: expected a number > 0\.0\. Received: k=0\.0\. Use a value such as k=1\.0"),
        (dict(alpha=-1.0), ValueError, r"Invalid `alpha`: expected a number >= 0\.0\. Received: alpha=-1\.0"),
        (dict(beta="0.75"), TypeError, r"Invalid `beta`: expected a real number\. Received: beta='0\.75' of type str"),
    ],
)
def test_local_response_norm_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        nops.local_response_norm(rng_normal((2, 3, 4)), **kwargs)


@settings(max_examples=20, deadline=None)
@given(
    layout=st.sampled_from([(LAST4, -1), (FIRST3, 1)]),
    size=st.sampled_from([1, 2, 5]),
    alpha=st.floats(0.0, 10.0),
    beta=st.floats(-1.0, 2.0),
    k=st.floats(0.1, 5.0),
    seed=st.integers(0, 5),
)
def test_local_response_norm_property(layout, size, alpha, beta, k, seed):
    shape, axis = layout
    x = rng_normal(shape, 0.0, 2.0, seed=seed)
    y = nops.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k, axis=axis)  # eager: no recompiles
    np.testing.assert_allclose(to_np(y), reference.local_response_norm(x, size, alpha, beta, k, axis),
                               rtol=2e-5, atol=1e-6)
