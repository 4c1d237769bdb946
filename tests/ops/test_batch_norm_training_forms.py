"""normlab.ops.batch_norm's training forms: ghost batches and batch renormalization."""

import numpy as np
import pytest

from normlab import ops as nops
from normlab.ops.validate import check_renorm_clipping
from normlab.testing import reference
from tests.ops._shared import FIRST3, FLAT, LAST4, call, per_channel, rng_normal, to_np


@pytest.mark.parametrize("shape, axis, v", [(LAST4, -1, 2), (FIRST3, 1, 2), (FLAT, -1, 4), (FLAT, -1, 1)])
def test_ghost_batch_norm_matches_reference(shape, axis, v):
    x = rng_normal(shape, 1.0, 2.0)
    c = shape[axis]
    gamma, beta = per_channel(c, 1), per_channel(c, 2, -1, 1)
    if v == 1:  # a ghost batch of one sample: its own per-sample statistics
        x = x + rng_normal(shape, seed=9)
    y, mean, var = call(nops.ghost_batch_norm, x, virtual_batch_size=v, axis=axis, gamma=gamma, beta=beta,
                        return_stats=True)
    ey, emean, evar = reference.ghost_batch_norm(x, v, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(to_np(y), ey, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


def test_ghost_batch_norm_with_mask_counts_only_unmasked_elements():
    x = rng_normal(FIRST3, 1.0, 2.0)
    mask = np.ones((4, 6, 1), "float32")
    mask[0, 3:] = 0
    mask[3, 1:] = 0
    _, mean, var = nops.ghost_batch_norm(x, 2, mask=mask, return_stats=True)
    means, variances, counts = [], [], []
    for part, m in ((x[:2], mask[:2]), (x[2:], mask[2:])):
        _, pm, pv = reference.batch_norm(part, mask=np.broadcast_to(m, part.shape))
        means.append(pm)
        variances.append(pv)
        counts.append(m.sum())
    # Each ghost batch weighs as its unmasked elements (9 and 7 here), so that
    # the averages are the masked batch's mean and the pooled within-ghost variance.
    np.testing.assert_allclose(to_np(mean), np.average(means, axis=0, weights=counts), atol=1e-5)
    np.testing.assert_allclose(to_np(var), np.average(variances, axis=0, weights=counts), rtol=1e-5)
    masked = np.broadcast_to(mask, x.shape).astype(bool)
    np.testing.assert_allclose(to_np(mean), [x[..., c][masked[..., c]].mean() for c in range(x.shape[-1])], atol=1e-5)


def test_ghost_batch_norm_indivisible_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Invalid `virtual_batch_size`: expected a divisor of the batch size.*"
                                         r"Received: virtual_batch_size=3 with a batch of 8\. Use one of \[1, 2, 4, 8\]"):
        nops.ghost_batch_norm(rng_normal((8, 6)), 3)
    with pytest.raises(ValueError, match=r"Invalid `virtual_batch_size`: expected a positive integer.*Received: virtual_batch_size=0"):
        nops.ghost_batch_norm(rng_normal(FLAT), 0)


@pytest.mark.parametrize(
    "clipping", [None, {"rmax": 1.5, "rmin": 0.8, "dmax": 0.5}, {"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}, {"dmax": 0.1}]
)
@pytest.mark.parametrize("v", [None, 2])
def test_batch_renorm_matches_reference(clipping, v):
    x = rng_normal(LAST4, 1.0, 2.0)
    gamma, beta = per_channel(6, 1), per_channel(6, 2, -1, 1)
    rmean, rstd = per_channel(6, 3, -1, 1), per_channel(6, 4, 0.5, 3)
    y, mean, var = call(nops.batch_renorm, x, renorm_mean=rmean, renorm_stddev=rstd, gamma=gamma, beta=beta,
                        clipping=clipping, virtual_batch_size=v, return_stats=True)
    ey, emean, evar = reference.batch_renorm(x, rmean, rstd, -1, gamma, beta, 1e-3, clipping, v)
    np.testing.assert_allclose(to_np(y), ey, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


@pytest.mark.parametrize("v", [None, 2])
def test_batch_renorm_at_epsilon_zero_with_a_zero_moving_std_is_batch_norm_there(v):
    """A moving std of 0 (epsilon=0 and a channel constant so far, a dead ReLU's) divided the correction by 0:
    NaN and inf. There r = 1 and d = 0: plain batch norm, which normalizes a constant channel to beta."""
    x = rng_normal(LAST4, 1.0, 2.0)
    x[..., 0] = 0.0  # constant: batch std 0 too
    gamma, beta = per_channel(6, 1), per_channel(6, 2, -1, 1)
    rmean, rstd = per_channel(6, 3, -1, 1), per_channel(6, 4, 0.5, 3)
    rstd[:2] = 0.0  # channel 1 varies: its batch std is not 0
    y = to_np(call(nops.batch_renorm, x, renorm_mean=rmean, renorm_stddev=rstd, gamma=gamma, beta=beta,
                   epsilon=0.0, virtual_batch_size=v))
    plain = to_np(call(nops.ghost_batch_norm, x, virtual_batch_size=2, gamma=gamma, beta=beta, epsilon=0.0) if v else
                  call(nops.batch_norm, x, training=True, gamma=gamma, beta=beta, epsilon=0.0))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[..., :2], plain[..., :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[..., 0], beta[0], atol=1e-6)
    ey, _, _ = reference.batch_renorm(x[..., 2:], rmean[2:], rstd[2:], -1, gamma[2:], beta[2:], 0.0, None, v)
    np.testing.assert_allclose(y[..., 2:], ey, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("call_op", [
    lambda x: nops.ghost_batch_norm(x, 2), lambda x: nops.batch_renorm(x, [], [], virtual_batch_size=2),
    lambda x: nops.evo_norm_s0(x, groups=-1), lambda x: nops.batch_norm(x, training=True)],
    ids=["ghost_batch_norm", "batch_renorm", "evo_norm_s0", "batch_norm"])
def test_an_input_with_no_channel_gives_an_empty_output(call_op):
    """Ghost batches reshaped to (-1, size, ...): ambiguous with a size 0 (JAX's modulo by zero, torch's
    reshape error, a value on TensorFlow); groups=-1 made 0 groups to divide by."""
    x = np.zeros((4, 3, 0), "float32")
    assert to_np(call_op(x)).shape == (4, 3, 0)


@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("v", [None, 2])
def test_batch_renorm_is_exact_at_large_offsets(offset, v):
    """d = (mean - renorm_mean) / s took the mean rounded at the offset's scale: 4.7e-4
    off at 1e4, 2.9e-2 at 1e6 (1% of the output), on every backend."""
    x = rng_normal(LAST4, offset, 2.0)
    rmean, rstd = np.full(6, offset, "float32"), per_channel(6, 4, 0.5, 3)
    gamma = per_channel(6, 1)
    y = call(nops.batch_renorm, x, renorm_mean=rmean, renorm_stddev=rstd, gamma=gamma, virtual_batch_size=v)
    ey, _, _ = reference.batch_renorm(x, rmean, rstd, -1, gamma, None, 1e-3, None, v)
    np.testing.assert_allclose(to_np(y), ey, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "clipping, pattern",
    [
        ({"rmax": 1.0, "rmin": 2.0}, r"expected rmin <= 1 <= rmax \(defaults 0 and inf\).*Received: renorm_clipping="),
        # r > 0, so rmax <= 0 made every output constant
        ({"rmax": 0.0}, r"expected rmin <= 1 <= rmax.*Received: renorm_clipping=\{'rmax': 0\.0\}"),
        ({"rmax": -1.0}, r"expected rmin <= 1 <= rmax.*Received: renorm_clipping=\{'rmax': -1\.0\}"),
        # r = 1 clipped: training outputs scaled by rmax (rmin) for good, never those of inference
        ({"rmax": 0.5}, r"expected rmin <= 1 <= rmax.*r = 1 must stay 1 or training outputs never match inference\. "
                        r"Received: renorm_clipping=\{'rmax': 0\.5\}"),
        ({"rmin": 2.0, "dmax": 1.0}, r"expected rmin <= 1 <= rmax.*Received: renorm_clipping=\{'rmin': 2\.0"),
        ({"dmax": -1.0}, r"expected dmax >= 0"),
        ({"rmx": 3.0}, r"expected None or a dict with keys among 'rmax', 'rmin', 'dmax'\. Received: renorm_clipping=\{'rmx': 3\.0\}"),
        ({"rmax": "3"}, r"expected a number for 'rmax'"),
    ],
)
def test_renorm_clipping_errors(clipping, pattern):
    with pytest.raises(ValueError, match=r"Invalid `renorm_clipping`: " + pattern):
        check_renorm_clipping(clipping)
