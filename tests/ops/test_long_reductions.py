"""Long reductions stay exact to float32 rounding on every path.

TensorFlow outside XLA sums over an axis other than the innermost one term
after another (relative error 9e-6 at 2**16 terms, 3.7e-3 at 2**22), so its
long sums are taken innermost or as a blocked product
(:data:`normlab.ops.sums.SEQUENTIAL_SUM_MAX_TERMS`,
:mod:`normlab.backends.policy`). These inputs reduce 2**18 or more terms
over a leading or middle axis; each result is checked against float64 with
fast paths on and off. The fused TensorFlow batch-norm kernel (kept for its
speed, documented in the policy) is not among them: 7 channels do not fit it.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab import backends

#: Output error allowed (outputs are O(1)): 1e-6 to 2e-6 measured on every
#: backend; TensorFlow's sequential sums gave 6e-5 to 3e-3 here.
TOLERANCE = 5e-6


def _normalized(x, axes, epsilon):
    x = x.astype(np.float64)
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + epsilon)


def _data(shape, seed=0):
    return (5.0 + 2.0 * np.random.default_rng(seed).standard_normal(shape)).astype("float32")


@pytest.fixture(params=[True, False], ids=["fast", "general"])
def fast_paths(request):
    if request.param:
        yield
    else:
        with backends.disabled():
            yield


def test_moments_over_a_leading_axis(fast_paths):
    x = _data((2**19, 2))
    _, variance = normlab.ops.moments(x, axes=[0])
    np.testing.assert_allclose(ops.convert_to_numpy(variance).ravel(), x.astype(np.float64).var(0), rtol=1e-6)


@pytest.mark.parametrize("axes", [[0, 1], [-3, -2], [1, -3]])
def test_total_takes_negative_axes(axes):
    """The exact sum (blocked on TensorFlow from 256 terms) reads axes as NumPy does."""
    from normlab.ops.sums import total

    x = _data((32, 40, 3))
    got = ops.convert_to_numpy(total(ops.convert_to_tensor(x), axes))
    np.testing.assert_allclose(got, x.astype(np.float64).sum((0, 1), keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    "make, shape, axes, kwargs",
    [
        (lambda: normlab.LayerNormalization(axis=1, epsilon=1e-3), (2, 2**18, 2), (1,), {}),
        (lambda: normlab.BatchNormalization(), (64, 4096, 7), (0, 1), {"mask": True}),
        (lambda: normlab.BatchNormalization(), (64, 64, 64, 7), (0, 1, 2), {}),
        (lambda: normlab.GroupNormalization(groups=1, epsilon=1e-3), (2, 512, 512, 2), (1, 2, 3), {}),
    ],
    ids=["layer_norm_middle_axis", "batch_norm_masked", "batch_norm", "group_norm"],
)
def test_long_reductions_match_float64(fast_paths, make, shape, axes, kwargs):
    x = _data(shape)
    if kwargs.get("mask"):
        kwargs = {"mask": np.ones(shape[:-1], bool)}
    y = ops.convert_to_numpy(make()(x, training=True, **kwargs))
    np.testing.assert_allclose(y, _normalized(x, axes, 1e-3), atol=TOLERANCE)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph's unknown sizes")
def test_an_unknown_batch_in_a_graph():
    # As `fit` traces: the batch size unknown (it counts as 32), the others known.
    import tensorflow as tf

    x = _data((64, 4096, 7))
    layer = normlab.BatchNormalization()
    layer.build(x.shape)

    @tf.function(input_signature=[tf.TensorSpec([None, 4096, 7]), tf.TensorSpec([None, 4096], tf.bool)])
    def step(x, mask):
        return layer(x, training=True, mask=mask)

    y = ops.convert_to_numpy(step(x, np.ones(x.shape[:-1], bool)))
    np.testing.assert_allclose(y, _normalized(x, (0, 1), 1e-3), atol=TOLERANCE)


@pytest.mark.parametrize("offset", [2.0, 1e6])
@pytest.mark.parametrize("make, shape, reduced, first", [
    (lambda: normlab.BatchNormalization(epsilon=1e-3), (31, 32, 32, 4), (0, 1, 2), (0, 0, 0)),
    (lambda: normlab.BatchNormalization(axis=1, epsilon=1e-3), (31, 4, 32, 32), (0, 2, 3), (0, slice(None), 0, 0)),
    (lambda: normlab.BatchNormalization(axis=1, epsilon=1e-3), (31, 4, 1024), (0, 2), (0, slice(None), 0)),
    (lambda: normlab.BatchNormalization(epsilon=1e-3), (1, 31741, 4), (0, 1), (0, 0)),  # a prime length
    (lambda: normlab.GroupNormalization(groups=1, epsilon=1e-3), (2, 128, 128, 4), (1, 2, 3), (slice(None), 0, 0)),
    (lambda: normlab.InstanceNormalization(epsilon=1e-3), (2, 128, 128, 4), (1, 2), (slice(None), 0, 0)),
], ids=["batch_norm", "batch_norm_channels_first", "batch_norm_channels_first_3d", "batch_norm_prime_length",
        "group_norm", "instance_norm"])
def test_mid_length_sums_about_an_outlier_shift(fast_paths, make, shape, reduced, first, offset):
    """Sums of 2**14 to 2**15 terms, below the blocked product: TensorFlow added them one term after another
    (1.5e-6 to 4.4e-6 relative), which the one-pass variance about an outlier first element (3.9 standard
    deviations out, offset ratio 15) multiplied by 16: outputs (up to 5 here) 3.5e-4 off at an offset of 2
    and 6e-3 at 1e6 (batch norm; group and instance norm 1e-4 to 3.6e-3; Keras' layers 4e-7 to 1.5e-5 at
    offset 2). Summed in blocks: at most 2.5e-5. Channels-first batch norm (reduced axes around the channel
    axis) and a length that no block divides were still summed one term after another: 3.5e-4 and 4.9e-4
    off at an offset of 2, 5.5e-3 at 1e6; now their innermost axes are summed first, then the others."""
    noise = np.random.default_rng(0).standard_normal(shape)
    noise[first] = 3.9  # each slice's first element
    x = (offset + noise).astype("float32")
    y = ops.convert_to_numpy(make()(x, training=True))
    np.testing.assert_allclose(y, _normalized(x, reduced, 1e-3), atol=5e-5)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_group_sums_split_by_the_group_axis(fast_paths, offset):
    """Channels-last group norm with several channels per group sums ``(N, H, W, G, C/G)`` over ``(1, 2, 4)``:
    JAX's and torch's sums accumulated the positions one after another, the output 7.1e-5 off float64 at an
    offset of 1e6 on the general path (which serves ``jax.jvp``, ``torch.func`` and ``backends.disabled()``);
    the channels of a group are summed first now (5.4e-7 and 8.0e-7)."""
    x = (offset + np.random.default_rng(1).standard_normal((4, 64, 64, 64))).astype("float32")
    y = ops.convert_to_numpy(normlab.ops.group_norm(x, 32))
    grouped = x.reshape(4, 64, 64, 32, 2)
    expected = _normalized(grouped, (1, 2, 4), 1e-3).reshape(x.shape)
    np.testing.assert_allclose(y, expected, atol=TOLERANCE)


def _compiled(layer):
    """The layer's training call as ``fit`` compiles it: XLA on TensorFlow (``jit_compile``), ``jax.jit``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: layer(x, training=True), jit_compile=True)
    if backend == "jax":
        import jax

        return jax.jit(lambda x: layer(x, training=True))
    return lambda x: layer(x, training=True)


@pytest.mark.parametrize("offset", [2.0, 1e4])
@pytest.mark.parametrize("make, shape, reduced", [
    (lambda: normlab.BatchNormalization(epsilon=1e-3), (31, 32, 32, 4), (0, 1, 2)),
    (lambda: normlab.BatchNormalization(epsilon=1e-3), (4, 64, 64, 8), (0, 1, 2)),
    (lambda: normlab.GroupNormalization(groups=1, epsilon=1e-3), (4, 64, 64, 8), (1, 2, 3)),
    (lambda: normlab.InstanceNormalization(epsilon=1e-3), (4, 64, 64, 4), (1, 2)),
    (lambda: normlab.InstanceNormalization(epsilon=1e-3), (31, 32, 32, 4), (1, 2)),  # 1024 terms: one pass
], ids=["batch_norm", "batch_norm_fused", "group_norm", "instance_norm", "instance_norm_short"])
def test_compiled_sums_about_an_outlier(make, shape, reduced, offset):
    """Compiled, as ``fit`` runs a step. TensorFlow's XLA on the CPU sums over axes that are not innermost
    with 1.8e-6 relative error at 31744 terms, which one-pass variances multiplied by up to 17: outputs up
    to 5 here were 1.9e-5 to 1.4e-4 off at an offset of 2 with this outlier first element (Keras' two-pass
    layers 1.4e-6 to 5e-6); from 2048 terms a second pass over the residuals about the mean now corrects the
    mean and takes the variance there (within 8.5e-7; 2.2e-6 at one pass below)."""
    noise = np.random.default_rng(0).standard_normal(shape)
    noise[(0, 0, 0) if 0 in reduced else (slice(None), 0, 0)] = 3.9  # each slice's first element
    x = (offset + noise).astype("float32")
    layer = make()
    layer.build(shape)
    y = ops.convert_to_numpy(_compiled(layer)(x))
    np.testing.assert_allclose(y, _normalized(x, reduced, 1e-3), atol=5e-6)


@pytest.mark.parametrize("outlier", [30.0, 3000.0])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_batch_norm_with_a_far_first_element(outlier, compiled):
    """One value far out, first in the batch (TensorFlow's fused kernel, which serves this shape, takes a
    one-pass variance under XLA and with oneDNN: about a sample row, as it was shifted before, outputs were
    1.2e-2 off compiled and 1.3e-4 eager; about a subsample mean, within 3e-6; Keras' layer 1.8e-6)."""
    x = np.random.default_rng(1).standard_normal((8, 32, 32, 16))
    x[0, 0, 0, :] = outlier
    x = x.astype("float32")
    layer = normlab.BatchNormalization()
    layer.build(x.shape)
    call = _compiled(layer) if compiled else (lambda t: layer(t, training=True))
    y = ops.convert_to_numpy(call(x))
    np.testing.assert_allclose(y[1:], _normalized(x, (0, 1, 2), 1e-3)[1:], atol=1e-5)


@pytest.mark.parametrize("synchronized", [False, True], ids=["masked", "synchronized"])
def test_float64_counts_beyond_float32_integers(synchronized):
    """A count of 2**24 + 1 kept positions stays exact in float64 (Keras'
    ``ops.maximum`` on torch computed it in float32: 2**24, so the mean of one
    1 among zeros came out 0). JAX keeps float64 only under x64."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX computes float64 data in float32 without jax_enable_x64")
    n = 2**24 + 1
    x = np.zeros((1, n), "float64")
    x[0, 0] = 1.0
    kwargs = {"replica_sum": lambda t: t} if synchronized else {"mask": np.ones((1, n), bool)}
    mean, variance = normlab.ops.moments(x, axes=[1], **kwargs)
    assert ops.convert_to_numpy(mean).dtype == np.float64
    np.testing.assert_allclose(ops.convert_to_numpy(mean).ravel(), [1.0 / n], rtol=1e-12)
    np.testing.assert_allclose(ops.convert_to_numpy(variance).ravel(), [(n - 1) / n**2], rtol=1e-12)
