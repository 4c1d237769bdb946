"""Filter response normalization and the TLU (Singh & Krishnan, 2019)."""

from __future__ import annotations

import math
from typing import Sequence

from keras import ops

from normlab.ops.arith import maximum
from normlab.ops.axes import (
    canonicalize_axes,
    channel_axis,
    complement,
    float_tensor,
    known_dims,
    per_channel,
    the_channel_axis,
)
from normlab.ops.moments import mean_square, stats_dtype, widened
from normlab.ops.normalize import normalize
from normlab.ops.params import check_param
from normlab.ops.validate import check_epsilon, error_message
from normlab.types import Axis, Shape, Tensor


def frn_axes(axis: Axis, ndim: int) -> tuple[int, list[int]]:
    """Resolves FRN's ``axis`` into ``(channel_axis, spatial_axes)``.

    An int is the channel axis (normlab's convention): the statistics run
    over every other non-batch axis. A list is TF Addons' convention: the
    spatial axes to reduce over; exactly one non-batch axis must remain, and
    it is the channel axis.
    """
    if isinstance(axis, (list, tuple)):
        spatial = canonicalize_axes(axis, ndim)
        rest = complement(spatial, ndim, keep_batch=True)
        if len(rest) != 1:
            raise ValueError(
                error_message(
                    "axis",
                    "as a list, the spatial axes to reduce over (TF Addons' convention), leaving "
                    "exactly one non-batch axis for the channels",
                    f"axis={axis!r} for an input of rank {ndim}, which leaves axes {rest}",
                    "Pass the channel axis as an int instead (axis=-1 or axis=1) to reduce over "
                    "all other non-batch axes.",
                )
            )
        return rest[0], spatial
    channel = the_channel_axis(axis, ndim, "filter response normalization")
    return channel, complement([channel], ndim, keep_batch=True)


def check_frn_input(shape: Shape, spatial: Sequence[int], learned_epsilon: bool, *, sizes: bool = False) -> None:
    """Raises for an input without a spatial axis, unless a learned epsilon is
    used; with ``sizes`` (a layer's build: the architecture's static sizes),
    also for spatial axes known to hold one position (1x1). A call's sizes
    are not checked: in a model built for any size they depend on the data."""
    known = [d for d in (shape[a] for a in spatial) if isinstance(d, int)] if sizes else []
    one_position = not spatial or (len(known) == len(spatial) and math.prod(known) == 1)
    if one_position and not learned_epsilon:
        raise ValueError(
            error_message(
                "inputs",
                "an input with more than one spatial position (rank >= 3, not 1x1), or a learned "
                "epsilon: at one position nu2 = x**2 and FRN collapses to sign(x) unless a learned "
                "epsilon keeps it smooth (the paper's advice for 1x1 activations)",
                f"shape={tuple(shape)} without a learned epsilon",
                "Pass learned_epsilon (FilterResponseNormalization(learned_epsilon=True)), add a "
                "spatial axis, or use LayerNormalization.",
            )
        )


def tlu(x: Tensor, tau: Tensor, axis: int = -1, *, alpha: Tensor | None = None) -> Tensor:
    """Thresholded linear unit: ``max(x, tau)``, or ``max(x, alpha * x + tau)``.

    Formula: ``y = max(x, tau)`` with a per-channel threshold ``tau``; with
    ``alpha`` (TLU-affine, as in TF Addons) ``y = max(x, alpha * x + tau)``.

    Args:
        x: input of rank >= 2, batch first.
        tau: per-channel threshold of shape ``(C,)`` (or a scalar).
        axis: the channel axis. Default -1.
        alpha: optional per-channel slope of shape ``(C,)``. Default None.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import tlu
        >>> x = np.array([[-2.0, 0.5], [1.0, -1.0]], "float32")
        >>> ops.convert_to_numpy(tlu(x, np.array([-1.0, 0.0], "float32"))).tolist()
        [[-1.0, 0.5], [1.0, 0.0]]

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer", CVPR 2020.
        https://arxiv.org/abs/1911.09737
    """
    x = float_tensor(x)
    ndim, a, channels = channel_axis(x, axis)
    if tau is None:
        raise ValueError(error_message("tau", f"the learned threshold: a tensor of shape ({channels},) or a number",
                                       "tau=None", f"Pass e.g. zeros of shape ({channels},)."))
    tau = check_param("tau", tau, (channels,), stats_dtype(x.dtype))
    alpha = check_param("alpha", alpha, (channels,), stats_dtype(x.dtype))
    dtype = stats_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    floor = ops.cast(per_channel(tau, ndim, a, channels), dtype)
    if alpha is not None:
        floor = ops.cast(per_channel(alpha, ndim, a, channels), dtype) * xs + floor
    return ops.cast(maximum(xs, floor), x.dtype)


def filter_response_norm(
    x: Tensor,
    axis: Axis = -1,
    *,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    epsilon: float = 1e-6,
    learned_epsilon: Tensor | None = None,
    tau: Tensor | None = None,
) -> Tensor:
    """Filter response normalization: per sample and channel, divide by the RMS over space.

    Formula: ``nu2 = mean(x^2)`` over the spatial axes, per sample and
    channel; ``y = x / sqrt(nu2 + epsilon + |learned_epsilon|) * gamma + beta``;
    then, if ``tau`` is given, the TLU ``y = max(y, tau)``.

    Args:
        x: input of rank >= 2, batch first. With no spatial axis (rank 2),
            ``nu2 = x^2`` and ``learned_epsilon`` is required (the paper's advice).
        axis: an int, the channel axis (statistics over all other non-batch
            axes); or a list, TF Addons' convention: the spatial axes to reduce
            over, leaving one channel axis. Default -1.
        gamma: optional per-channel scale of shape ``(C,)``. Default None.
        beta: optional per-channel offset of shape ``(C,)``. Default None.
        epsilon: added to ``nu2``. Default 1e-6.
        learned_epsilon: optional scalar or ``(1,)`` tensor; its absolute
            value is added to ``epsilon``. Default None.
        tau: optional per-channel TLU threshold of shape ``(C,)``. Default None.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import filter_response_norm
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype("float32")
        >>> a = ops.convert_to_numpy(filter_response_norm(x))                # channel axis -1
        >>> b = ops.convert_to_numpy(filter_response_norm(x, axis=[1, 2]))   # TF Addons' form
        >>> bool(np.allclose(a, b)), bool(np.allclose((a ** 2).mean(axis=(1, 2)), 1, atol=1e-4))
        (True, True)

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer: Eliminating
        Batch Dependence in the Training of Deep Neural Networks", CVPR 2020.
        https://arxiv.org/abs/1911.09737
    """
    x = float_tensor(x)
    ndim = len(x.shape)
    a, spatial = frn_axes(axis, ndim)
    check_frn_input(x.shape, spatial, learned_epsilon is not None)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    epsilon = check_epsilon(epsilon)
    gamma, beta, tau = (check_param(name, param, (channels,), stats_dtype(x.dtype))
                        for name, param in (("gamma", gamma), ("beta", beta), ("tau", tau)))
    xw = widened(x)
    nu2 = mean_square(xw, spatial)
    if learned_epsilon is not None:
        learned_epsilon = float_tensor(learned_epsilon, "learned_epsilon")
        if tuple(learned_epsilon.shape) not in ((), (1,)):
            raise ValueError(error_message(
                "learned_epsilon", "a single learned epsilon (shape () or (1,)), shared by every channel",
                f"learned_epsilon of shape {tuple(learned_epsilon.shape)}",
                "Pass one value, as FilterResponseNormalization(learned_epsilon=True) keeps it."))
        nu2 = nu2 + ops.abs(ops.cast(ops.reshape(learned_epsilon, ()), nu2.dtype))
    y = ops.cast(normalize(
        xw, 0.0, nu2, epsilon=epsilon,
        gamma=per_channel(gamma, ndim, a, channels),
        beta=per_channel(beta, ndim, a, channels),
    ), x.dtype)
    return y if tau is None else tlu(y, tau, axis=a)
