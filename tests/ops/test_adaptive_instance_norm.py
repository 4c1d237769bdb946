"""normlab.ops.adaptive_instance_norm against the float64 reference: layouts,
offsets, a broadcast style, dtypes, gradients, epsilon=0 and errors."""

import keras
import numpy as np
import pytest
from keras import ops

from normlab import ops as nops
from normlab.testing import reference
from normlab.testing.autodiff import finite_differences, gradients
from tests.ops._shared import BACKEND, FIRST3, LAST4, LAST5, jax_x64, rng_normal, to_np


def adain(content, style, **kwargs):
    """The op; on JAX under ``jax.jit`` (one XLA compile instead of one per primitive)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(lambda c, s: nops.adaptive_instance_norm(c, s, **kwargs))(content, style)
    return nops.adaptive_instance_norm(content, style, **kwargs)


def _style_shape(shape, axis):
    """The content's shape with other spatial sizes (the channel and batch sizes kept)."""
    a = axis % len(shape)
    return tuple(d if i in (0, a) else d + 1 + i for i, d in enumerate(shape))


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1), (LAST5, -1), (LAST4, 2)])
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_matches_reference_with_a_style_of_other_spatial_sizes(shape, axis, offset):
    content = rng_normal(shape, offset + 0.5, 2.0, seed=0)
    style = rng_normal(_style_shape(shape, axis), -3.0, 0.7, seed=1)
    y = to_np(adain(content, style, axis=axis))
    expected = reference.adaptive_instance_norm(content, style, axis=axis)
    # The residuals content - mean are exact at any offset: the error is float32's on O(1) values.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_a_style_at_a_large_offset_moves_the_output_there_to_within_its_ulp(offset):
    content, style = rng_normal(LAST4, 0.0, 1.0, seed=2), rng_normal(LAST4, offset, 3.0, seed=3)
    y = to_np(adain(content, style))
    ulp = np.spacing(np.float32(offset))
    np.testing.assert_allclose(y, reference.adaptive_instance_norm(content, style), rtol=0, atol=ulp)


def test_a_content_restyled_with_itself_is_unchanged():
    x = rng_normal(LAST4, 1e4, 2.0, seed=4)
    np.testing.assert_allclose(to_np(adain(x, x)), x, rtol=0, atol=np.spacing(np.float32(1e4)))


def test_a_style_batch_of_one_applies_to_every_sample():
    content, style = rng_normal(LAST4, seed=5), rng_normal((1, 5, 2, 6), 2.0, 3.0, seed=6)
    y = to_np(adain(content, style))
    expected = reference.adaptive_instance_norm(content, np.repeat(style, LAST4[0], axis=0))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)


def test_each_sample_takes_its_own_styles_statistics_only():
    content, style = rng_normal(LAST4, seed=7), rng_normal(LAST4, 1.0, 2.0, seed=8)
    y = to_np(adain(content, style))
    moved = style.copy()
    moved[1:] += 1e3  # every other sample's style
    np.testing.assert_allclose(to_np(adain(content, moved))[:1], y[:1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype):
    content, style = rng_normal(LAST4, 3.0, 2.0, seed=9), rng_normal(LAST4, 0.0, 0.5, seed=10)
    ch, sh = ops.cast(content, dtype), ops.cast(style, dtype)
    y = adain(ch, sh)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    exact = reference.adaptive_instance_norm(to_np(ch), to_np(sh))  # of the rounded inputs, in float64
    half_ulp = np.spacing(np.abs(exact).astype(dtype if dtype == "float16" else "float32")).astype("float64")
    if dtype == "bfloat16":
        half_ulp = half_ulp * 2.0 ** 16  # bfloat16 keeps 8 of float32's 24 significant bits
    np.testing.assert_array_less(np.abs(to_np(y) - exact), half_ulp / 2 + 1e-6)


def test_mixed_dtypes_return_the_contents():
    content, style = rng_normal(LAST4, seed=11), ops.cast(rng_normal(LAST4, 1.0, 2.0, seed=12), "float16")
    y = adain(content, style)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(to_np(y), reference.adaptive_instance_norm(content, to_np(style)),
                               rtol=1e-5, atol=2e-5)


def test_gradients_match_float64_finite_differences():
    content, style = rng_normal((2, 3, 3, 2), 0.5, 2.0, seed=13), rng_normal((2, 2, 4, 2), -1.0, 0.5, seed=14)
    dy = rng_normal((2, 3, 3, 2), seed=15)
    exact = BACKEND != "jax" or jax_x64()
    args = [a.astype("float64") for a in (content, style)] if exact else [content, style]
    got = gradients(lambda c, s: nops.adaptive_instance_norm(c, s), args, dy)
    want = finite_differences(lambda c, s: reference.adaptive_instance_norm(c, s), [content, style], dy)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6 if exact else 2e-3, atol=1e-7 if exact else 2e-4)


def test_epsilon_zero_keeps_constant_slices_finite():
    """A constant content slice normalizes to the style's mean; a constant style
    slice has std 0: the output is its mean, and no gradient is NaN."""
    content, style = rng_normal(LAST4, seed=16), rng_normal(LAST4, 2.0, 1.0, seed=17)
    content[0, ..., 0] = 5.0
    style[1, ..., 2] = -3.0
    y = to_np(adain(content, style, epsilon=0.0))
    np.testing.assert_allclose(y[0, ..., 0], style[0, ..., 0].mean(dtype="float64"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[1, ..., 2], -3.0, rtol=0, atol=1e-6)
    grads = gradients(lambda c, s: nops.adaptive_instance_norm(c, s, epsilon=0.0), [content, style],
                      rng_normal(LAST4, seed=18))
    assert all(np.isfinite(g).all() for g in grads)


def test_works_traced_with_unknown_batch_and_spatial_sizes():
    content, style = rng_normal(LAST4, 1e4, 2.0, seed=19), rng_normal((4, 5, 2, 6), 1.0, 3.0, seed=20)
    expected = reference.adaptive_instance_norm(content, style)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((None, None, None, 6), tf.float32)
        fn = tf.function(lambda c, s: nops.adaptive_instance_norm(c, s), input_signature=[spec, spec])
        y = fn(content, style).numpy()
    elif BACKEND == "torch":
        import torch

        fn = torch.compile(lambda c, s: nops.adaptive_instance_norm(c, s), fullgraph=True, dynamic=True)
        y = ops.convert_to_numpy(fn(ops.convert_to_tensor(content), ops.convert_to_tensor(style)))
    else:
        y = to_np(adain(content, style))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)


def test_errors_name_argument_value_and_fix():
    x = rng_normal(LAST4)
    with pytest.raises(ValueError, match=r"Invalid `content`: expected an input of rank >= 3.*content.shape=\(4, 6\)"):
        nops.adaptive_instance_norm(x[:, 0, 0], x[:, 0, 0])
    with pytest.raises(ValueError, match=r"Invalid `style`: expected a tensor of the content's rank 4.*"
                                         r"style.shape=\(4, 3, 6\).*Reshape"):
        nops.adaptive_instance_norm(x, x[:, 0])
    with pytest.raises(ValueError, match=r"Invalid `style`: expected 6 channels on axis -1.*style.shape=\(4, 3, 3, 5\)"):
        nops.adaptive_instance_norm(x, x[..., :5])
    with pytest.raises(ValueError, match=r"Invalid `style`: expected a batch of 4 .* or of 1.*style.shape=\(2, 3, 3, 6\)"):
        nops.adaptive_instance_norm(x, x[:2])
    with pytest.raises(ValueError, match=r"Received: axis=0"):
        nops.adaptive_instance_norm(x, x, axis=0)
    with pytest.raises(ValueError, match=r"Invalid `epsilon`.*Received: epsilon=-1"):
        nops.adaptive_instance_norm(x, x, epsilon=-1.0)
