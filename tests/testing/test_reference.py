"""The float64 references the tests hold the ops to: what they take must mean
what the ops take it to mean, or a test passes against a wrong oracle."""

import numpy as np
import pytest

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import to_np


def test_a_mask_counts_by_truth_value_as_in_the_ops():
    """The reference weighted each position by the mask's value (0.19 off the op for a
    mask of 2, 1 and 0.5)."""
    x = np.random.default_rng(0).normal(size=(3, 6, 8))
    mask = np.broadcast_to(np.array([2.0, 0.0, 1.0, 1.0, 0.0, 0.5])[None, :, None], (3, 6, 1))
    mean, var = reference.moments(x, (0, 1), mask=mask)
    kept = x[:, [0, 2, 3, 5]]
    np.testing.assert_allclose(mean.reshape(-1), kept.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(var.reshape(-1), kept.var(axis=(0, 1)), rtol=1e-12)
    got_mean, got_var = nops.moments(x.astype("float32"), (0, 1), mask=mask)
    np.testing.assert_allclose(to_np(got_mean).reshape(-1), mean.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(to_np(got_var).reshape(-1), var.reshape(-1), rtol=1e-5)


def test_ghost_batches_that_do_not_divide_the_batch_are_refused_as_by_the_op():
    with pytest.raises(ValueError, match="virtual_batch_size=3 does not divide the batch of 8"):
        reference.ghost_batch_norm(np.zeros((8, 4)), 3)
