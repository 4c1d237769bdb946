"""normlab.ops.switchable_norm against the float64 reference."""

import numpy as np
import pytest

from normlab import ops as nops
from normlab.testing import reference
from tests.ops._shared import FIRST3, LAST4, LAST5, call, per_channel, rng_normal, to_np


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1), (LAST5, -1)])
@pytest.mark.parametrize("training", [True, False])
def test_switchable_norm_matches_reference(shape, axis, training):
    x = rng_normal(shape, 2.0, 3.0)
    c = shape[axis]
    wm, wv = np.array([0.3, -0.2, 0.5], "float32"), np.array([-0.4, 0.1, 0.2], "float32")
    gamma, beta = per_channel(c, 2), per_channel(c, 3, -1, 1)
    mm, mv = (None, None) if training else (per_channel(c, 4, -1, 1), per_channel(c, 5, 1, 4))
    y, mean, var = call(nops.switchable_norm, x, mean_weights=wm, variance_weights=wv, moving_mean=mm,
                        moving_variance=mv, axis=axis, gamma=gamma, beta=beta, epsilon=1e-3,
                        training=training, return_stats=True)
    expected, emean, evar = reference.switchable_norm(x, wm, wv, axis, gamma, beta, 1e-3, mm, mv)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


def test_switchable_norm_errors():
    w = np.zeros(3, "float32")
    with pytest.raises(ValueError, match=r"Invalid `moving_mean`: expected per-channel batch statistics when "
                                         r"training=False\. Received: moving_mean=None"):
        nops.switchable_norm(rng_normal((2, 3, 4)), w, w)
    # (it said "the normalized feature dimensions" and "one value per feature")
    with pytest.raises(ValueError, match=r"Invalid `mean_weights`: expected a tensor of shape \(3,\) \(mixing "
                                         r"logits of the instance, layer and batch statistics\)\. "
                                         r"Received: mean_weights.shape=\(2,\)\. Pass one value per statistic"):
        nops.switchable_norm(rng_normal((2, 3, 4)), np.zeros(2, "float32"), w, training=True)
    # Instance statistics need a spatial axis: a (batch, channels) input has none.
    for training in (True, False):
        with pytest.raises(ValueError, match=r"Invalid `x`: expected an input of rank >= 3 .*"
                                             r"Received: x\.shape=\(4, 3\)\. Add a spatial axis"):
            nops.switchable_norm(rng_normal((4, 3)), w, w, np.zeros(3, "float32"), np.ones(3, "float32"),
                                 training=training)


@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("training", [True, False])
def test_switchable_norm_stays_exact_at_large_offsets(offset, training):
    """The three means are mixed relative to one shift per sample and channel; mixed as
    values near the offset they lost its low bits (5e-4 off at 1e4, 4e-2 at 1e6)."""
    x = rng_normal(LAST4, offset, 1.0)
    c = LAST4[-1]
    wm, wv = np.array([0.3, -0.2, 0.5], "float32"), np.array([-0.4, 0.1, 0.2], "float32")
    mm, mv = (None, None) if training else (offset + per_channel(c, 4, -1, 1), per_channel(c, 5, 0.5, 2))
    y = call(nops.switchable_norm, x, mean_weights=wm, variance_weights=wv, moving_mean=mm,
             moving_variance=mv, training=training)
    expected = reference.switchable_norm(x.astype("float64"), wm, wv, -1, None, None, 1e-3, mm, mv)[0]
    np.testing.assert_allclose(to_np(y), expected, atol=1e-5)
    only_instance = np.array([30.0, 0.0, 0.0], "float32")  # softmax ~ one-hot: instance norm
    y = call(nops.switchable_norm, x, mean_weights=only_instance, variance_weights=only_instance, training=True)
    np.testing.assert_allclose(to_np(y), reference.instance_norm(x.astype("float64")), atol=1e-5)
