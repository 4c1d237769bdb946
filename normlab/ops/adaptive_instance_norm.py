"""Adaptive instance normalization (Huang & Belongie, 2017): one input's
channels normalized to another input's per-channel statistics."""

from __future__ import annotations

from keras import ops

from normlab.ops.axes import complement, float_tensor, the_channel_axis
from normlab.ops.moments import shifted_moments, stats_dtype, widened
from normlab.ops.normalize import inverse_std, normalize
from normlab.ops.validate import check_epsilon, error_message, require_spatial
from normlab.types import Shape, Tensor


def check_content_and_style(content_shape: Shape, style_shape: Shape, axis: int) -> int:
    """Validates the two shapes against each other; returns the channel axis (non-negative).

    Both need the same rank (>= 3: statistics run over the spatial axes) and
    the same number of channels at ``axis``; the spatial sizes may differ,
    and the style's batch size must equal the content's or be 1 (one style
    for every sample). Sizes unknown to a tracer (the channels too: no
    weight depends on them) are not checked here.
    """
    content_shape, style_shape = tuple(content_shape), tuple(style_shape)
    require_spatial(content_shape, "adaptive instance normalization", argument="content")
    if len(style_shape) != len(content_shape):
        raise ValueError(
            error_message(
                "style", f"a tensor of the content's rank {len(content_shape)} (batch, spatial..., channels)",
                f"style.shape={style_shape}, content.shape={content_shape}",
                "Reshape the style features to the content's layout; their spatial sizes may differ.",
            )
        )
    a = the_channel_axis(axis, len(content_shape), "adaptive instance normalization")
    channels = content_shape[a]  # may be unknown: no weight depends on it
    if channels is not None and style_shape[a] is not None and style_shape[a] != channels:
        raise ValueError(
            error_message(
                "style", f"{channels} channels on axis {axis}, as many as the content has",
                f"style.shape={style_shape}, content.shape={content_shape}",
                "Take both from the same layer of the encoder, or check `axis` (1 for channels-first).",
            )
        )
    batch, style_batch = content_shape[0], style_shape[0]
    if batch is not None and style_batch is not None and style_batch not in (1, batch):
        raise ValueError(
            error_message(
                "style", f"a batch of {batch} (one style per content sample) or of 1 (one style for all)",
                f"style.shape={style_shape}, content.shape={content_shape}",
                "Pair each content sample with a style, or pass a single style.",
            )
        )
    return a


def _style_std(variance: Tensor, epsilon: float) -> Tensor:
    """``sqrt(variance + epsilon)``, with a finite gradient where ``epsilon == 0`` and ``variance == 0``."""
    if epsilon > 0:
        return ops.sqrt(variance + epsilon)
    return variance * inverse_std(variance, 0.0)  # sqrt(v) for v > 0, 0 at v = 0


def adaptive_instance_norm(content: Tensor, style: Tensor, axis: int = -1, *, epsilon: float = 1e-5) -> Tensor:
    """Adaptive instance normalization: the content's channels with the style's mean and spread.

    Formula: for each sample and channel, with means ``mu`` and biased
    variances ``var`` over the spatial axes,
    ``y = (content - mu_c) / sqrt(var_c + epsilon) * sqrt(var_s + epsilon) + mu_s``.
    It is instance normalization whose per-sample scale and offset are the
    style's standard deviation and mean, so nothing is learned. The content
    statistics use the exact two-pass shifted moments of every normlab norm
    and the apply step subtracts before it scales, so large offsets
    (1e4, 1e6) stay exact; statistics are float32 at least and the result
    has the content's dtype. ``adaptive_instance_norm(x, x)`` is ``x``.

    Args:
        content: input of rank >= 3, batch first: the features to restyle.
        style: the features whose statistics are imposed, of the content's
            rank and channel count; its spatial sizes may differ, and its
            batch size may be 1 (one style for every content sample).
        axis: the channel axis. Default -1; 1 for channels-first.
        epsilon: added to both variances. Default 1e-5, as in the widely
            used PyTorch port (the authors' Lua code adds it to the
            content's variance only).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import adaptive_instance_norm
        >>> rng = np.random.default_rng(0)
        >>> content = rng.normal(size=(2, 8, 8, 3)).astype("float32")
        >>> style = rng.normal(5.0, 2.0, size=(2, 4, 6, 3)).astype("float32")   # another size
        >>> y = ops.convert_to_numpy(adaptive_instance_norm(content, style))
        >>> bool(np.allclose(y.mean(axis=(1, 2)), style.mean(axis=(1, 2)), atol=1e-4))
        True
        >>> bool(np.allclose(y.std(axis=(1, 2)), style.std(axis=(1, 2)), rtol=1e-3))
        True

    Reference:
        Huang & Belongie, "Arbitrary Style Transfer in Real-time with
        Adaptive Instance Normalization", ICCV 2017. https://arxiv.org/abs/1703.06868
    """
    content, style = float_tensor(content), float_tensor(style)
    a = check_content_and_style(content.shape, style.shape, axis)
    epsilon = check_epsilon(epsilon)
    spatial = complement([a], len(content.shape), keep_batch=True)
    out_dtype, content = content.dtype, widened(content)
    shift, mean, variance = shifted_moments(content, spatial)
    style_shift, style_mean, style_variance = shifted_moments(style, spatial)
    dtype = stats_dtype(content.dtype)
    scale = ops.cast(_style_std(style_variance, epsilon), dtype)
    offset = ops.cast(style_shift + style_mean, dtype)
    return ops.cast(normalize(content, mean, variance, gamma=scale, beta=offset, epsilon=epsilon, shift=shift),
                    out_dtype)
