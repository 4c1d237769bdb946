"""The shift of masked statistics: the median of each slice's first, middle
and last kept elements (:func:`normlab.ops.samples.kept_samples`), each
gathered where the mask is the same for every slice and selected by a sum
otherwise, exactly equal to a NumPy reference either way, eager and compiled;
and the median of three samples (:func:`normlab.ops.samples.median_of_three`)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from normlab.ops import samples as samples_module
from normlab.ops.samples import kept_samples, median_of_three

BACKEND = keras.backend.backend()


def _samples(x, kept, axes):
    """The three samples of each slice, stacked on a new leading axis."""
    return ops.stack(kept_samples(x, kept, axes))


def _reference(x, kept, axes):
    """The first, middle and last elements of ``x`` that ``kept`` selects in each slice (row-major over
    ``axes``; the middle: the first kept at or after halfway between the other two), 0 where none; stacked."""
    kept = np.broadcast_to(kept, x.shape)
    rest = [a for a in range(x.ndim) if a not in axes]
    xs = np.transpose(x, rest + sorted(axes)).reshape([x.shape[a] for a in rest] + [-1])
    ks = np.transpose(kept, rest + sorted(axes)).reshape(xs.shape)
    out = np.zeros((3, *xs.shape[:-1]), x.dtype)
    for index in np.ndindex(*xs.shape[:-1]):
        hits = np.flatnonzero(ks[index])
        if hits.size:
            middle = hits[2 * (hits - hits[0]) >= hits[-1] - hits[0]][0]
            out[(slice(None), *index)] = xs[index][[hits[0], middle, hits[-1]]]
    return out.reshape([3] + [1 if a in axes else x.shape[a] for a in range(x.ndim)])


def _case(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    if name == "batch statistics, a Keras mask":  # (batch, time, 1) over (batch, time): one position
        kept = rng.random((4, 6, 1)) < 0.6
        return x, kept, [0, 1]
    if name == "leading positions padding":
        kept = np.ones((4, 6, 1), bool)
        kept[0] = False
        kept[1, :4] = False
        x[0] = np.nan  # never read
        x[1, :4] = np.inf
        return x, kept, [0, 1]
    if name == "nothing kept":
        x[:] = np.nan
        return x, np.zeros((4, 6, 1), bool), [0, 1]
    if name == "channels first":  # (N, C, H, W) over (N, H, W): the mask is the same for every channel
        x = rng.normal(size=(3, 4, 5, 2)).astype("float32")
        kept = rng.random((3, 1, 5, 2)) < 0.3
        return x, kept, [0, 2, 3]
    if name == "one axis of three":
        kept = np.zeros((1, 6, 1), bool)
        kept[0, 4] = True
        return x, kept, [1]
    if name == "per-sample statistics":  # a position per slice: selected by a sum
        kept = rng.random((4, 6, 1)) < 0.5
        kept[2] = False
        return x, kept, [1, 2]
    if name == "a mask per element":
        return x, rng.random((4, 6, 3)) < 0.5, [0, 1]
    raise AssertionError(name)


CASES = ["batch statistics, a Keras mask", "leading positions padding", "nothing kept", "channels first",
         "one axis of three", "per-sample statistics", "a mask per element"]
GATHERED = CASES[:5]


def _spread(kept, x, axes):
    """``kept`` at full size along ``axes`` (as the masked statistics pass it)."""
    shape = [x.shape[a] if a in axes else kept.shape[a] for a in range(x.ndim)]
    return np.broadcast_to(kept, shape)


@pytest.fixture
def gathers(monkeypatch):
    """The calls of ``keras.ops.take`` that :func:`kept_samples` makes (one list entry each)."""
    calls = []
    take = ops.take
    monkeypatch.setattr(samples_module.ops, "take", lambda *a, **k: calls.append(1) or take(*a, **k))
    return calls


@pytest.fixture
def small_gathered(monkeypatch):
    """Small inputs gathered too (by default they are summed: :data:`GATHER_MIN_ELEMENTS`)."""
    monkeypatch.setattr(samples_module, "GATHER_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("small", ["gathered", "summed"])
def test_kept_samples_matches_the_reference_exactly(name, small, gathers, request):
    if small == "gathered":
        request.getfixturevalue("small_gathered")
    x, kept, axes = _case(name)
    got = ops.convert_to_numpy(_samples(ops.convert_to_tensor(x), ops.convert_to_tensor(_spread(kept, x, axes)),
                                          axes))
    np.testing.assert_array_equal(got, _reference(x, kept, axes))
    # One position for every slice: gathered, nothing of x's size summed.
    assert bool(gathers) == (small == "gathered" and name in GATHERED)


def test_large_inputs_are_gathered(gathers):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 64, samples_module.GATHER_MIN_ELEMENTS // 4096)).astype("float32")
    kept = rng.random((64, 64, 1)) < 0.01
    got = _samples(ops.convert_to_tensor(x), ops.convert_to_tensor(_spread(kept, x, [0, 1])), [0, 1])
    np.testing.assert_array_equal(ops.convert_to_numpy(got), _reference(x, kept, [0, 1]))
    assert gathers


@pytest.mark.parametrize("name", ["batch statistics, a Keras mask", "leading positions padding", "nothing kept",
                                  "per-sample statistics"])
def test_kept_samples_compiled(name, small_gathered):
    x, kept, axes = _case(name)
    kept = _spread(kept, x, axes)
    expected = _reference(x, kept, axes)
    if BACKEND == "jax":
        import jax

        got = jax.jit(lambda x, k: _samples(x, k, axes))(x, kept)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        known = tf.function(lambda x, k: _samples(x, k, axes), jit_compile=True)(x, kept)
        np.testing.assert_array_equal(ops.convert_to_numpy(known), expected)
        # An unknown batch may be 0 at run time: selected by a sum (a gather there would be out of range).
        specs = [tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None, *kept.shape[1:]], tf.bool)]
        unknown = tf.function(lambda x, k: _samples(x, k, axes), input_signature=specs)
        np.testing.assert_array_equal(ops.convert_to_numpy(unknown(x[:0], kept[:0])),
                                      np.zeros([3] + [1 if a in axes else (0 if a == 0 else d)
                                                       for a, d in enumerate(x.shape)], "float32"))
        got = unknown(x, kept)
    elif BACKEND == "torch":
        import torch

        got = torch.compile(lambda x, k: _samples(x, k, axes), fullgraph=True, dynamic=False)(torch.tensor(x), torch.tensor(kept))
    else:
        pytest.skip(f"no compiler on the {BACKEND} backend")
    np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile's symbolic sizes")
def test_kept_samples_compiled_with_dynamic_sizes(small_gathered):
    """Sizes are symbolic under ``dynamic=True`` (and once a size changed): the gather's index arithmetic
    failed on them (Keras' minimum of a SymInt), so a trace takes the selecting sum."""
    import torch

    x, kept, axes = _case("batch statistics, a Keras mask")
    assert axes == [0, 1]  # written into the function: dynamic=True makes a captured list's ints symbolic
    compiled = torch.compile(lambda x, k: _samples(x, k, [0, 1]), fullgraph=True, dynamic=True)
    for batch in (4, 3):
        k = _spread(kept[:batch], x[:batch], axes)
        got = compiled(torch.tensor(x[:batch]), torch.tensor(k))
        np.testing.assert_array_equal(ops.convert_to_numpy(got), _reference(x[:batch], k, axes))


@pytest.mark.skipif(BACKEND != "jax", reason="jax.export's symbolic sizes")
def test_kept_samples_exported_with_a_feature_size_that_may_be_0(small_gathered):
    """``x[..., 2:]`` of a symbolic ``c`` has ``max(c - 2, 0)`` channels: the positions' line had size
    ``min(c', 1)`` there, which broadcast against nothing."""
    import jax

    x, kept, axes = _case("batch statistics, a Keras mask")
    scope = jax.export.SymbolicScope()
    specs = [jax.ShapeDtypeStruct(jax.export.symbolic_shape(s, scope=scope), t)
             for s, t in (("b, t, c", np.float32), ("b, t, 1", np.bool_))]
    exported = jax.export.export(jax.jit(lambda x, k: _samples(x[..., 2:], k, axes)))(*specs)
    np.testing.assert_array_equal(np.asarray(exported.call(x, kept)), _reference(x[..., 2:], kept, axes))


@pytest.mark.skipif(BACKEND != "jax", reason="jax.export's symbolic sizes")
def test_kept_samples_exported_with_reduced_sizes_that_may_be_0(small_gathered):
    """``x[:, 2:]`` of a symbolic ``t`` reduces over ``max(t - 2, 0)`` positions (a valid convolution's
    output, per-sample statistics): the min over them failed to export ("inconclusive" whether the size
    is at least 1, which jnp's min without an initial value asks)."""
    import jax

    x, kept, axes = _case("per-sample statistics")
    scope = jax.export.SymbolicScope()
    specs = [jax.ShapeDtypeStruct(jax.export.symbolic_shape(s, scope=scope), t)
             for s, t in ((", ".join(["b", "t"] + [str(d) for d in x.shape[2:]]), np.float32),
                          (", ".join(["b", "t"] + [str(d) for d in kept.shape[2:]]), np.bool_))]
    exported = jax.export.export(jax.jit(lambda x, k: _samples(x[:, 2:], k[:, 2:], axes)))(*specs)
    np.testing.assert_array_equal(np.asarray(exported.call(x, kept)), _reference(x[:, 2:], kept[:, 2:], axes))
    empty = np.asarray(exported.call(x[:, :2], kept[:, :2]))  # nothing to reduce: zeros
    np.testing.assert_array_equal(empty, np.zeros([3] + [1 if a in axes else d for a, d in enumerate(x[:, :2].shape)]))
    # The ops above it: per-sample masked moments and masked batch statistics.
    import normlab

    for op in (lambda x, k: normlab.ops.moments(x[:, 2:], axes, mask=k[:, 2:])[1],
               lambda x, k: normlab.ops.batch_norm(x[:, 2:], training=True, mask=k[:, 2:])):
        exported = jax.export.export(jax.jit(op))(*specs)
        np.testing.assert_allclose(np.asarray(exported.call(x, kept)), np.asarray(op(x, kept)), rtol=1e-6, atol=1e-6)
        assert np.asarray(exported.call(x[:, :2], kept[:, :2])).size == np.asarray(op(x[:, :2], kept[:, :2])).size


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function's unknown sizes")
def test_kept_samples_with_an_unknown_feature_size_of_0(small_gathered):
    import tensorflow as tf

    x, kept, axes = _case("batch statistics, a Keras mask")
    specs = [tf.TensorSpec([*x.shape[:2], None], tf.float32), tf.TensorSpec(kept.shape, tf.bool)]
    fn = tf.function(lambda x, k: _samples(x, k, axes), input_signature=specs)
    assert tuple(fn(x[..., :0], kept).shape) == (3, 1, 1, 0)
    np.testing.assert_array_equal(fn(x, kept).numpy(), _reference(x, kept, axes))


def _median_of_three(triples):
    return ops.convert_to_numpy(median_of_three(*(ops.convert_to_tensor(np.ascontiguousarray(triples[:, i]))
                                                  for i in range(3))))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_median_of_three_is_the_median_of_every_ordering_and_tie(dtype):
    values = [-2.0, -1.0, 0.0, 1.0, 1.5, 100.0, 101.0, 104.0]
    triples = np.array(list(itertools.product(values, repeat=3)), "float32")
    if dtype == "bfloat16":
        import ml_dtypes

        triples = triples.astype(ml_dtypes.bfloat16)
    else:
        triples = triples.astype(dtype)
    got = _median_of_three(triples)
    assert str(got.dtype) == dtype
    np.testing.assert_array_equal(got.astype("float32"), np.median(triples.astype("float32"), axis=1))


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_median_of_three_near_an_offset_is_one_of_the_samples(offset):
    triples = (offset + np.random.default_rng(0).normal(size=(2000, 3))).astype("float32")
    np.testing.assert_array_equal(_median_of_three(triples), np.median(triples, axis=1))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-float(np.float32(1e30)), float(np.float32(1e30)), width=32), min_size=3, max_size=3))
def test_median_of_three_is_within_a_rounding_of_the_median(values):
    """Exact where the differences to the first sample are (samples within a
    factor of 2 of each other), else within a rounding of the largest."""
    triple = np.array([values], "float32")
    got, = _median_of_three(triple).astype("float64")
    median = np.median(triple.astype("float64"))
    assert abs(got - median) <= 2 * np.spacing(np.float32(np.abs(triple).max())), (values, got)


def test_median_of_an_infinite_sample_is_nan():
    """Its slice's statistics are NaN anyway (documented on median_of_three)."""
    assert np.isnan(_median_of_three(np.array([[np.inf, 1.0, 2.0]], "float32"))).all()
