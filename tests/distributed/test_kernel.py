"""The cross-replica path of the statistics kernel, in one process on any backend.

The multi-replica runs are in the per-backend tests of this package; here a
stand-in ``replica_sum`` checks what the kernel does with it.
"""

import numpy as np
import pytest
from keras import ops

import normlab
from normlab import backends, distributed
from normlab.ops.moments import moments, shifted_moments
from normlab.testing import reference


def _x(seed=0, shape=(6, 5, 3), offset=1e4):
    return (offset + np.random.default_rng(seed).normal(size=shape)).astype("float32")


def _np(t):
    return ops.convert_to_numpy(t).astype("float64")


@pytest.mark.parametrize("masked", [False, True])
def test_one_replica_sum_gives_the_unsynchronized_statistics(masked):
    x = _x()
    mask = (np.random.default_rng(1).random((6, 5, 1)) < 0.6).astype("float32") if masked else None
    plain = moments(x, [0, 1], mask=mask)
    synced = moments(x, [0, 1], mask=mask, replica_sum=lambda t: t)
    want = reference.moments(x, [0, 1], mask=mask)
    for got, base, ref in zip(synced, plain, want):
        np.testing.assert_allclose(_np(got), _np(base), rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(_np(got), ref, rtol=1e-6, atol=1e-5)


def test_sums_and_counts_are_reduced_across_replicas():
    # Two replicas holding the same data: the global batch is x twice, with
    # x's mean and variance, but twice the count in every all-reduced sum.
    x = _x(2)
    calls = []

    def two_replicas(t):
        calls.append(tuple(t.shape))
        return t * 2.0

    shift, mean, variance = shifted_moments(x, [0, 1], replica_sum=two_replicas)
    assert calls == [(2, 1, 1, 3), (2, 1, 1, 3)]  # one all-reduce per pass, sums stacked
    want_mean, want_var = reference.moments(x, [0, 1])
    np.testing.assert_allclose(_np(shift) + _np(mean), want_mean, rtol=1e-7)
    np.testing.assert_allclose(_np(variance), want_var, rtol=1e-5)


def test_synchronized_batch_norm_bypasses_the_fast_path(monkeypatch):
    def refuse(op, **_):
        def hook(*args, **kwargs):
            raise AssertionError(f"fast path {op} ran on a synchronized batch")
        return hook

    monkeypatch.setattr(backends, "fast_path", refuse)
    x = _x(3, (4, 3))
    y, mean, var = normlab.ops.batch_norm(x, training=True, return_stats=True, replica_sum=lambda t: t)
    want_y, want_mean, want_var = reference.batch_norm(x)
    np.testing.assert_allclose(_np(y), want_y, atol=1e-4)
    np.testing.assert_allclose(_np(var), want_var, rtol=1e-5)
    with pytest.raises(AssertionError, match="fast path"):
        normlab.ops.batch_norm(x, training=True)


def test_no_replica_sum_outside_any_distribution():
    assert distributed.replica_sum() is None
    with distributed.axis_name("batch"):
        with distributed.axis_name(("hosts", "devices")):
            assert distributed.current_axis_name() == ("hosts", "devices")
        assert distributed.current_axis_name() == "batch"
    assert distributed.current_axis_name() is None
