"""The cross-replica path of the statistics kernel, in one process on any backend.

The multi-replica runs are in the per-backend tests of this package; here a
stand-in ``replica_sum`` checks what the kernel does with it.
"""

import keras
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
    with distributed.axis_name("batch") as name:
        assert name == "batch"
        with distributed.axis_name(("hosts", "devices")):
            assert distributed.current_axis_name() == ("hosts", "devices")
        assert distributed.current_axis_name() == "batch"
    assert distributed.current_axis_name() is None


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.lax.psum over a mapped axis")
def test_jax_replica_sum_is_a_psum_over_the_named_axis():
    import jax

    x = np.arange(6, dtype="float32").reshape(3, 2)  # three replicas, one row each
    with distributed.axis_name("replicas"):
        total = jax.vmap(lambda t: distributed.replica_sum()(t), axis_name="replicas")(x)
    np.testing.assert_array_equal(np.asarray(total), np.broadcast_to(x.sum(axis=0), (3, 2)))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.distributed")
def test_torch_replica_sum_reduces_over_the_process_group_forward_and_backward(monkeypatch):
    """A stand-in torch.distributed whose groups hold two replicas with the same values:
    every all-reduce (a sum) doubles its tensor in place and records the group it reduced over."""
    import torch
    import torch.distributed as dist

    group, other = object(), object()
    sizes = {dist.group.WORLD: 1, group: 2, other: 2}
    reduced = []

    def all_reduce(tensor, op=None, group=None):
        assert op == dist.ReduceOp.SUM
        reduced.append(group)
        tensor.mul_(2)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: sizes[group])
    monkeypatch.setattr(dist, "all_reduce", all_reduce)

    assert distributed.replica_sum() is None  # a world of one process: nothing to synchronize
    with distributed.process_group(group):
        with distributed.process_group(other):
            distributed.replica_sum()(torch.ones(2))
        t = torch.tensor([1.0, 2.0], requires_grad=True)
        total = distributed.replica_sum()(t)
        (total * torch.tensor([3.0, 5.0])).sum().backward()
    np.testing.assert_array_equal(total.detach().numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(t.detach().numpy(), [1.0, 2.0])  # the input is left as it was
    np.testing.assert_array_equal(t.grad.numpy(), [6.0, 10.0])  # the gradient is all-reduced too
    assert reduced == [other, group, group]
    assert distributed.replica_sum() is None
