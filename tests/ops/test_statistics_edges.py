"""Edges of the statistics core (normlab.ops.moments, normlab.ops.normalize)
that the results of the norms alone do not show: cross-replica statistics of
a channel with nothing kept and at a large offset, ``inverse_std`` at
epsilon 0 and its gradient, Python-number statistics with float16 data, an
empty masked batch, and the shift about one outlier."""

import numpy as np
import pytest
from keras import ops

from normlab import ops as nops
from normlab.ops.normalize import inverse_std
from normlab.testing.autodiff import gradients


def _np(t):
    return ops.convert_to_numpy(t)


def _identity_sum(t):  # one replica: the cross-replica sum of a tensor is the tensor
    return t


def test_cross_replica_statistics_of_a_channel_with_nothing_kept_are_zero():
    """As the local path's: mean 0 and variance 0, not 0 / 0."""
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "float32")
    mask = np.array([[True, False], [True, False], [False, False]])  # channel 1 keeps nothing
    for replica_sum in (None, _identity_sum):
        mean, variance = nops.moments(x, [0], mask=mask, replica_sum=replica_sum)
        np.testing.assert_array_equal(_np(mean), [[2.0, 0.0]])  # the kept values of channel 0: 1 and 3
        np.testing.assert_array_equal(_np(variance), [[1.0, 0.0]])


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_cross_replica_variance_is_exact_at_a_large_offset(masked):
    """The sums are taken about a shift (the global mean rounded to the data's
    dtype); the variance subtracts the residual mean's square. Without it the
    relative error at 1e6 + N(0, 1) was 1.7e-5 (now 3e-8)."""
    x = (1e6 + np.random.default_rng(0).standard_normal((4096, 2))).astype("float32")
    mask = np.ones((4096, 1), bool) if masked else None
    _, variance = nops.moments(x, [0], mask=mask, replica_sum=_identity_sum)
    np.testing.assert_allclose(_np(variance).ravel(), x.astype("float64").var(axis=0), rtol=1e-6)


def test_inverse_std_at_epsilon_zero_is_zero_where_the_variance_is():
    np.testing.assert_array_equal(_np(inverse_std(ops.convert_to_tensor([0.0, 4.0]), 0.0)), [0.0, 0.5])
    np.testing.assert_allclose(_np(inverse_std(ops.convert_to_tensor([0.0, 4.0]), 1e-3)),
                               1.0 / np.sqrt([1e-3, 4.001]), rtol=1e-6)


@pytest.mark.parametrize("op", ["batch_norm", "layer_norm"])
def test_a_constant_slice_at_epsilon_zero_has_no_gradient(op):
    """Its outputs are beta whatever x does there: every gradient in x is 0
    (with 1 / sqrt(0) taken as 1 it was up to 1.33)."""
    x = np.ones((4, 3), "float32")
    cotangent = np.random.default_rng(3).standard_normal((4, 3)).astype("float32")
    fn = {"batch_norm": lambda t: nops.batch_norm(t, training=True, epsilon=0.0),
          "layer_norm": lambda t: nops.layer_norm(t, epsilon=0.0)}[op]
    (grad,) = gradients(fn, [x], cotangent)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


def test_number_statistics_with_float16_data_are_applied_in_float32():
    """A Python-number mean stays a number (no tensor made of it); the
    subtraction still runs in float32: in float16 the mean 1000.3 rounded to
    1000.5 first, and the outputs were 0.5 and 2.5 instead of 0.7 and 2.7."""
    x = np.array([[1001.0, 1003.0]], "float16")
    y = nops.normalize(x, 1000.3, 1.0, epsilon=0.0)
    assert _np(y).dtype == np.float16
    np.testing.assert_allclose(_np(y).astype("float64"), x.astype("float64") - 1000.3, rtol=1e-3)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 3)], ids=["no-sample", "no-position"])
def test_an_empty_masked_batch_has_nan_statistics(shape):
    """As an empty unmasked one (the documented NaN), not the 0 and 0 of the
    masked sums' at-least-one count, which a layer would average into its
    moving statistics."""
    x = np.zeros(shape, "float32")
    mask = np.ones(shape[:-1] + (1,), bool)
    for kwargs in ({}, {"mask": mask}):
        y, mean, variance = nops.batch_norm(x, training=True, return_stats=True, **kwargs)
        assert _np(y).shape == shape
        assert np.isnan(_np(mean)).all() and np.isnan(_np(variance)).all(), kwargs


def test_ghost_batches_of_padding_only_have_zero_statistics():
    """As a batch of padding without ghost batches: 0 and 0, finite (the ghost average's at-least-one count)."""
    x = np.random.default_rng(4).standard_normal((4, 3, 2)).astype("float32")
    y, mean, variance = nops.ghost_batch_norm(x, 2, mask=np.zeros((4, 3, 1), bool), return_stats=True)
    np.testing.assert_array_equal(_np(mean), [0.0, 0.0])
    np.testing.assert_array_equal(_np(variance), [0.0, 0.0])
    assert np.isfinite(_np(y)).all()


def test_given_statistics_get_their_gradients_in_inference():
    """With the fast paths on (the default): the torch hook steps aside for
    statistics that need a gradient (its kernel's output has none)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3)).astype("float32")
    mean, variance = np.array([0.5, -1.0, 2.0], "float32"), np.array([1.0, 4.0, 0.25], "float32")
    cotangent = rng.standard_normal((4, 3)).astype("float32")
    _, dmean, dvariance = gradients(lambda t, m, v: nops.batch_norm(t, m, v, epsilon=1e-3), [x, mean, variance],
                                    cotangent)
    x64, m64, v64 = (a.astype("float64") for a in (x, mean, variance))
    np.testing.assert_allclose(dmean, -cotangent.sum(axis=0) / np.sqrt(v64 + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(dvariance, (-0.5 * cotangent * (x64 - m64)).sum(axis=0) * (v64 + 1e-3) ** -1.5,
                               rtol=1e-5)


@pytest.mark.parametrize("where", [(0, 0, 0), (4, 16, 16), (-1, -1, -1)], ids=["first", "middle", "last"])
@pytest.mark.parametrize("outlier", [3000.0, -1e5])
def test_one_outlier_among_the_shift_samples(where, outlier):
    """The shift is the median of each slice's first, middle and last elements.
    About the first one alone, a value of 3000 there made the residuals' mean a
    rounded sum of large terms of one sign: the mean 1.2e-4 off (3e-2 on
    TensorFlow at -1e5), the outputs 1.2e-5 (now within 7e-6 and 1e-6)."""
    x = np.random.default_rng(3).standard_normal((8, 32, 32, 4))
    x[where] = outlier
    x = x.astype("float32")
    reference = x.astype("float64")
    mean, variance = reference.mean((0, 1, 2)), reference.var((0, 1, 2))
    got_mean, got_variance = nops.moments(x, [0, 1, 2], keepdims=False)
    np.testing.assert_allclose(_np(got_mean), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(got_variance), variance, rtol=1e-5)  # TensorFlow's sums: 3e-6
    shift, relative, var = nops.shifted_moments(x, [0, 1, 2])
    y = _np(nops.normalize(x, relative, var, shift=shift, epsilon=1e-3))
    np.testing.assert_allclose(y, (reference - mean) / np.sqrt(variance + 1e-3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("mask", ["all kept", "a Keras mask"])
def test_one_outlier_among_the_masked_shift_samples(where, mask):
    """With a mask the shift is the median of each slice's first, middle and
    last kept elements. About the first kept one alone, a value of 3000 there
    put the mean 6e-4 off and the outputs 3e-5 (torch, JAX; 5e-4 on
    TensorFlow channels-first), where the same data without a mask was within 1e-7."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 64, 4))
    kept = np.ones((16, 64, 1), bool) if mask == "all kept" else rng.random((16, 64, 1)) < 0.7
    positions = np.flatnonzero(kept.ravel())
    at = {"first": positions[0], "middle": positions[len(positions) // 2], "last": positions[-1]}[where]
    x.reshape(-1, 4)[at] = 3000.0  # one (batch, time) position, every channel
    x = x.astype("float32")
    reference = x.astype("float64")[kept[..., 0]]
    mean, variance = reference.mean(0), reference.var(0)
    got_mean, got_variance = nops.moments(x, [0, 1], mask=kept, keepdims=False)
    np.testing.assert_allclose(_np(got_mean), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(got_variance), variance, rtol=1e-5)
    y = _np(nops.batch_norm(x, training=True, mask=kept, epsilon=1e-3))
    expected = (x.astype("float64") - mean) / np.sqrt(variance + 1e-3)
    np.testing.assert_allclose(y[kept[..., 0]], expected[kept[..., 0]], rtol=1e-5, atol=1e-6)
