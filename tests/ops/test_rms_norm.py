"""normlab.ops.rms_norm against the float64 reference and Keras' op."""

import numpy as np
import pytest
from keras import ops

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import FIRST3, FLAT, LAST4, call, per_channel, rng_normal, to_np


@pytest.mark.parametrize("shape, axis", [(FLAT, -1), (LAST4, [1, 2]), (FIRST3, 1), (LAST4, [1, 2, 3])])
def test_rms_norm_matches_reference(shape, axis):
    x = rng_normal(shape, 1.0, 2.0)
    axes = [a % len(shape) for a in np.atleast_1d(axis)]
    feature = [shape[a] for a in axes]
    gamma = per_channel(int(np.prod(feature)), 1).reshape(feature)
    beta = per_channel(int(np.prod(feature)), 2, -1, 1).reshape(feature)
    y = to_np(call(nops.rms_norm, x, axis=axis, gamma=gamma, beta=beta))
    np.testing.assert_allclose(y, reference.rms_norm(x, axis, gamma, beta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, [2, 3], [1, 2, 3]])  # Keras' scale broadcasts on trailing axes only
def test_rms_norm_matches_keras_op(axis):
    x = rng_normal(LAST4, 0.5, 3.0)
    feature = [x.shape[a] for a in np.atleast_1d(axis)]
    gamma = per_channel(int(np.prod(feature)), 3).reshape(feature)
    ours = to_np(call(nops.rms_norm, x, axis=axis, gamma=gamma, epsilon=1e-6))
    theirs = ops.convert_to_numpy(ops.rms_normalization(x, scale=gamma, axis=axis, epsilon=1e-6))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rms_norm_is_scale_invariant_not_shift_invariant():
    x = rng_normal(FLAT)
    y = to_np(nops.rms_norm(x, epsilon=0.0))
    np.testing.assert_allclose(to_np(nops.rms_norm(7.0 * x, epsilon=0.0)), y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_np(nops.rms_norm(x + 3.0, epsilon=0.0)), y, atol=1e-2)
