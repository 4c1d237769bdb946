"""More functional normalization ops, built on the same core as the rest.

* :func:`rms_norm` (Zhang & Sennrich 2019) and :func:`filter_response_norm`
  (Singh & Krishnan 2019, with :func:`tlu`) divide by a root mean square:
  the second moment about zero, taken by :func:`_mean_square` under the
  kernel's dtype policy (float32 at least; nothing is subtracted, so there
  is no cancellation to guard against), then applied by
  :func:`~normlab.ops.normalize.normalize` with a mean of 0.
* :func:`evo_norm_b0` and :func:`evo_norm_s0` (Liu et al. 2020) and
  :func:`switchable_norm` (Luo et al. 2018) take every statistic with
  :func:`~normlab.ops.moments.moments`.
* :func:`local_response_norm` (Krizhevsky et al. 2012) sums squares over a
  sliding window of channels, which no reduction kernel expresses; it only
  shares the dtype policy.
* :func:`batch_renorm` (Ioffe 2017) and :func:`ghost_batch_norm` (Hoffer et
  al. 2017) are the training forms of batch normalization with
  renormalization and with virtual ("ghost") batches.

Every op takes channels-last or channels-first data (``axis``), computes in
float32 at least, and returns the input's dtype.
"""

from __future__ import annotations

import math
import numbers

from keras import ops

from normlab.ops.axes import canonicalize_axes, complement, known_dims
from normlab.ops.functional import _broadcast, _check_param, _dims
from normlab.ops.moments import moments, shifted_moments, stats_dtype
from normlab.ops.normalize import normalize
from normlab.ops.validate import (
    ArgumentTypeError,
    check_epsilon,
    check_groups,
    divisors,
    error_message,
    require_spatial,
    resolve_groups,
)

# --------------------------------------------------------------------------- checks


def check_real(name: str, value, *, minimum=None, strict=False, example="") -> float:
    """Returns ``value`` as a float; a real number, optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            error_message(name, "a real number", f"{name}={value!r} of type {type(value).__name__}",
                          f"Pass a float such as {name}={example}.")
        )
    if not math.isfinite(value):
        raise ValueError(
            error_message(name, "a finite number", f"{name}={value!r}", f"Use a value such as {name}={example}.")
        )
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"{'>' if strict else '>='} {minimum}"
        raise ValueError(
            error_message(name, f"a number {bound}", f"{name}={value!r}", f"Use a value such as {name}={example}.")
        )
    return float(value)


def check_positive_int(name: str, value, *, example: int, allow_none: bool = False, meaning: str = ""):
    """Returns ``value`` as an int >= 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive integer" + (f" ({meaning})" if meaning else "")
        if allow_none:
            expected += " or None"
        raise ValueError(
            error_message(name, expected, f"{name}={value!r}", f"Pass an int such as {name}={example}.")
        )
    return int(value)


_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_renorm_clipping(clipping) -> dict:
    """Validates Keras' ``renorm_clipping`` dict; returns a copy with float values.

    Keys are optional: ``rmax`` (default inf), ``rmin`` (default 0) and
    ``dmax`` (default inf).
    """
    fix = "Pass a dict such as renorm_clipping={'rmax': 3.0, 'rmin': 1 / 3, 'dmax': 5.0}, or None."
    if clipping is None:
        return {}
    if not isinstance(clipping, dict) or set(clipping) - set(_CLIPPING_KEYS):
        raise ValueError(
            error_message("renorm_clipping", "None or a dict with keys among 'rmax', 'rmin', 'dmax'",
                          f"renorm_clipping={clipping!r}", fix)
        )
    out = {}
    for key, value in clipping.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ValueError(
                error_message("renorm_clipping", f"a number for {key!r}", f"renorm_clipping={clipping!r}", fix)
            )
        out[key] = float(value)
    if out.get("dmax", 0.0) < 0:
        raise ValueError(
            error_message("renorm_clipping", "dmax >= 0 (d is clipped to [-dmax, dmax])",
                          f"renorm_clipping={clipping!r}", fix)
        )
    if "rmax" in out and "rmin" in out and out["rmax"] < out["rmin"]:
        raise ValueError(
            error_message("renorm_clipping", "rmax >= rmin (r is clipped to [rmin, rmax])",
                          f"renorm_clipping={clipping!r}", fix)
        )
    return out


def _channel_axis(x, axis):
    ndim = len(x.shape)
    (a,) = canonicalize_axes(axis, ndim)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    return ndim, a, channels


def _per_channel(param, ndim, a, channels):
    return _broadcast(param, ndim, [a], [channels])


def _mean_square(x, axes):
    """``mean(x^2)`` over ``axes`` (kept as size-1 dims), in float32 at least.

    The second moment about zero, for the norms that divide by a root mean
    square. With no axes it is ``x^2`` itself (one element per statistic).
    """
    dtype = stats_dtype(x.dtype)
    square = ops.square(ops.cast(x, dtype))
    if not axes:
        return square
    # sum / count rather than ops.mean: Keras' torch mean reduces float64 in float32.
    dims = _dims(x)
    count = 1
    for a in axes:
        count = count * dims[a]
    return ops.sum(square, axis=list(axes), keepdims=True) / ops.cast(count, dtype)


# --------------------------------------------------------------------------- RMS


def rms_norm(x, axis=-1, *, gamma=None, beta=None, epsilon: float = 1e-6):
    """Root mean square normalization: rescales by the RMS over ``axis``, no centering.

    Formula: ``y = x / sqrt(mean(x^2 over axis) + epsilon) * gamma + beta``,
    with ``gamma`` and ``beta`` of the shape of ``x`` at ``axis``. Equal to
    ``keras.ops.rms_normalization(x, scale=gamma, axis=axis, epsilon=epsilon)``.

    Args:
        x: input of rank >= 2, batch first.
        axis: an int or a list of ints, never the batch axis. Default -1.
        gamma: optional scale of shape ``[x.shape[a] for a in axis]``. Default None.
        beta: optional offset of the same shape (not in the paper). Default None.
        epsilon: added to the mean square. Default 1e-6 (as Keras).

    Example:
        >>> import numpy as np
        >>> x = np.array([[3.0, -4.0]], "float32")           # RMS = sqrt(12.5)
        >>> ops.convert_to_numpy(rms_norm(x, epsilon=0.0)).astype("float64").round(4).tolist()
        [[0.8485, -1.1314]]

    Reference:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
        https://arxiv.org/abs/1910.07467
    """
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    axes = canonicalize_axes(axis, ndim)
    feature_shape = known_dims(x.shape, axes, axis=axis)
    epsilon = check_epsilon(epsilon)
    _check_param("gamma", gamma, feature_shape)
    _check_param("beta", beta, feature_shape)
    return normalize(
        x, 0.0, _mean_square(x, axes), epsilon=epsilon,
        gamma=_broadcast(gamma, ndim, axes, feature_shape),
        beta=_broadcast(beta, ndim, axes, feature_shape),
    )


# --------------------------------------------------------------------------- FRN and TLU


def frn_axes(axis, ndim: int):
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
    (channel,) = canonicalize_axes(axis, ndim)
    return channel, complement([channel], ndim, keep_batch=True)


def check_frn_input(shape, spatial, learned_epsilon: bool) -> None:
    """Raises for an input without a spatial axis unless a learned epsilon is used."""
    if not spatial and not learned_epsilon:
        raise ValueError(
            error_message(
                "inputs",
                "an input with a spatial axis (rank >= 3), or a learned epsilon: with no spatial "
                "axis nu2 = x**2 and FRN collapses to sign(x) unless a learned epsilon keeps it "
                "smooth (the paper's advice for 1x1 activations)",
                f"shape={tuple(shape)} without a learned epsilon",
                "Pass learned_epsilon (FilterResponseNormalization(learned_epsilon=True)), add a "
                "spatial axis, or use LayerNormalization.",
            )
        )


def tlu(x, tau, axis: int = -1, *, alpha=None):
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
        >>> x = np.array([[-2.0, 0.5], [1.0, -1.0]], "float32")
        >>> ops.convert_to_numpy(tlu(x, np.array([-1.0, 0.0], "float32"))).tolist()
        [[-1.0, 0.5], [1.0, 0.0]]

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer", CVPR 2020.
        https://arxiv.org/abs/1911.09737
    """
    x = ops.convert_to_tensor(x)
    ndim, a, channels = _channel_axis(x, axis)
    _check_param("tau", tau, (channels,))
    _check_param("alpha", alpha, (channels,))
    dtype = stats_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    floor = ops.cast(_per_channel(tau, ndim, a, channels), dtype)
    if alpha is not None:
        floor = ops.cast(_per_channel(alpha, ndim, a, channels), dtype) * xs + floor
    return ops.cast(ops.maximum(xs, floor), x.dtype)


def filter_response_norm(
    x, axis=-1, *, gamma=None, beta=None, epsilon: float = 1e-6, learned_epsilon=None, tau=None
):
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
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    a, spatial = frn_axes(axis, ndim)
    check_frn_input(x.shape, spatial, learned_epsilon is not None)
    (channels,) = known_dims(x.shape, [a], axis=axis)
    epsilon = check_epsilon(epsilon)
    for name, param in (("gamma", gamma), ("beta", beta), ("tau", tau)):
        _check_param(name, param, (channels,))
    nu2 = _mean_square(x, spatial)
    if learned_epsilon is not None:
        nu2 = nu2 + ops.abs(ops.cast(ops.reshape(learned_epsilon, ()), nu2.dtype))
    y = normalize(
        x, 0.0, nu2, epsilon=epsilon,
        gamma=_per_channel(gamma, ndim, a, channels),
        beta=_per_channel(beta, ndim, a, channels),
    )
    return y if tau is None else tlu(y, tau, axis=a)


# --------------------------------------------------------------------------- EvoNorm

#: Why the EvoNorms need ``epsilon > 0``: they divide an uncentered ``x``
#: by a standard deviation, so a slice with no spread has no defined output.
EVO_NORM_EPSILON_REASON = (
    "; EvoNorm divides the uncentered input by a standard deviation, so a constant "
    "slice would give inf or NaN with epsilon=0"
)


def evo_norm_b0(
    x, v=None, moving_variance=None, *, axis: int = -1, gamma=None, beta=None,
    epsilon: float = 1e-3, training: bool = False, return_stats: bool = False, replica_sum=None,
):
    """EvoNorm-B0: batch-dependent normalization-activation.

    Formula: ``y = x / max(sqrt(var_b + epsilon), v * x + sqrt(var_i + epsilon)) * gamma + beta``
    where ``var_b`` is the per-channel variance over the batch and spatial
    axes (``training=True``) or ``moving_variance`` (``training=False``), and
    ``var_i`` the per-sample, per-channel variance over the spatial axes.

    Args:
        x: input of rank >= 3, batch first.
        v: per-channel ``v`` of shape ``(C,)``. Default None (ones).
        moving_variance: per-channel variance ``(C,)``, required when ``training=False``.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to both variances, > 0. Default 1e-3 (as timm).
        training: use the batch variance (True) or ``moving_variance`` (False). Default False.
        return_stats: also return the variance used, shape ``(C,)``, as
            ``(y, variance)`` (the biased batch variance when training). Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            with ``training=True``, ``var_b`` is the global batch's. The
            per-sample ``var_i`` is unaffected. Default None.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype("float32")
        >>> y, var = evo_norm_b0(x, training=True, return_stats=True)
        >>> bool(np.allclose(ops.convert_to_numpy(var), x.var(axis=(0, 1, 2)), atol=1e-5))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """
    x = ops.convert_to_tensor(x)
    require_spatial(x.shape, "EvoNorm-B0", argument="x")
    ndim, a, channels = _channel_axis(x, axis)
    epsilon = check_epsilon(epsilon, positive=True, reason=EVO_NORM_EPSILON_REASON)
    for name, param in (("v", v), ("gamma", gamma), ("beta", beta), ("moving_variance", moving_variance)):
        _check_param(name, param, (channels,))
    dtype = stats_dtype(x.dtype)
    if training:
        _, variance = moments(x, complement([a], ndim), replica_sum=replica_sum)
    elif moving_variance is None:
        raise ValueError(
            error_message("moving_variance", "a per-channel variance when training=False",
                          "moving_variance=None, training=False",
                          "Pass the moving variance, or training=True to use the batch variance.")
        )
    else:
        variance = ops.cast(_per_channel(moving_variance, ndim, a, channels), dtype)
    _, instance_var = moments(x, complement([a], ndim, keep_batch=True))
    xs = ops.cast(x, dtype)
    right = ops.sqrt(instance_var + epsilon)
    if v is not None:
        right = xs * ops.cast(_per_channel(v, ndim, a, channels), dtype) + right
    else:
        right = xs + right
    y = xs / ops.maximum(ops.sqrt(variance + epsilon), right)
    if gamma is not None:
        y = y * ops.cast(_per_channel(gamma, ndim, a, channels), dtype)
    if beta is not None:
        y = y + ops.cast(_per_channel(beta, ndim, a, channels), dtype)
    y = ops.cast(y, x.dtype)
    return (y, ops.reshape(variance, (channels,))) if return_stats else y


def evo_norm_s0(x, v=None, *, groups: int = 32, axis: int = -1, gamma=None, beta=None, epsilon: float = 1e-5):
    """EvoNorm-S0: batch-independent normalization-activation with groups.

    Formula: ``y = x * sigmoid(v * x) / sqrt(var_g + epsilon) * gamma + beta``
    where ``var_g`` is the per-sample variance of ``x`` over each group of
    ``C // groups`` channels and all spatial axes (as in group normalization).

    Args:
        x: input of rank >= 2, batch first.
        v: per-channel ``v`` of shape ``(C,)``. Default None (ones).
        groups: number of groups, a divisor of ``C``; -1 for one per channel. Default 32.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the group variance, > 0. Default 1e-5 (as timm).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
        >>> y = ops.convert_to_numpy(evo_norm_s0(x, groups=3, epsilon=1e-12))
        >>> std = x.reshape(2, 16, 3, 2).std(axis=(1, 3)).repeat(2, axis=1)[:, None, None, :]
        >>> bool(np.allclose(y, x / (1 + np.exp(-x)) / std, atol=1e-5))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """
    x = ops.convert_to_tensor(x)
    ndim, a, channels = _channel_axis(x, axis)
    g = resolve_groups(check_groups(groups), channels, axis)
    epsilon = check_epsilon(epsilon, positive=True, reason=EVO_NORM_EPSILON_REASON)
    for name, param in (("v", v), ("gamma", gamma), ("beta", beta)):
        _check_param(name, param, (channels,))
    dims = _dims(x)
    grouped = dims[:a] + [g, channels // g] + dims[a + 1:]
    _, variance = moments(ops.reshape(x, grouped), complement([a], ndim + 1, keep_batch=True))
    xs = ops.cast(x, variance.dtype)
    gate = xs if v is None else xs * ops.cast(_per_channel(v, ndim, a, channels), xs.dtype)
    z = ops.reshape(xs * ops.sigmoid(gate), grouped)

    def grouped_param(p):
        if p is None:
            return None
        return _broadcast(ops.reshape(p, (g, channels // g)), ndim + 1, [a, a + 1], [g, channels // g])

    y = normalize(z, 0.0, variance, gamma=grouped_param(gamma), beta=grouped_param(beta), epsilon=epsilon)
    return ops.cast(ops.reshape(y, dims), x.dtype)


# --------------------------------------------------------------------------- Switchable


def switchable_norm(
    x, mean_weights, variance_weights, moving_mean=None, moving_variance=None, *,
    axis: int = -1, gamma=None, beta=None, epsilon: float = 1e-3, training: bool = False,
    return_stats: bool = False, replica_sum=None,
):
    """Switchable normalization: a learned mix of instance, layer and batch statistics.

    Formula: with ``w = softmax(mean_weights)`` and ``w' = softmax(variance_weights)``
    (order: instance, layer, batch), ``mean = w_in mean_in + w_ln mean_ln + w_bn mean_bn``
    and ``var = w'_in var_in + w'_ln var_ln + w'_bn var_bn``;
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``. Instance
    statistics are per sample and channel over the spatial axes, layer
    statistics per sample over all non-batch axes, and batch statistics per
    channel over the batch and spatial axes (``training=True``) or the given
    moving ones (``training=False``). All variances are biased.

    Args:
        x: input of rank >= 3, batch first.
        mean_weights: mixing logits for the means, shape ``(3,)``.
        variance_weights: mixing logits for the variances, shape ``(3,)``.
        moving_mean: per-channel mean ``(C,)``, required when ``training=False``.
        moving_variance: per-channel variance ``(C,)``, required when ``training=False``.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the mixed variance. Default 1e-3.
        training: batch statistics from ``x`` (True) or the moving ones (False). Default False.
        return_stats: also return the batch statistics used, ``(y, mean_bn, var_bn)``
            with shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            with ``training=True``, the batch statistics are the global
            batch's; instance and layer statistics are per sample anyway.
            Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import instance_norm
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
        >>> only_in = np.array([30.0, 0.0, 0.0], "float32")      # softmax ~ one-hot
        >>> y = switchable_norm(x, only_in, only_in, training=True)
        >>> bool(np.allclose(ops.convert_to_numpy(y), ops.convert_to_numpy(instance_norm(x)), atol=1e-5))
        True

    Reference:
        Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via
        Switchable Normalization", ICLR 2019. https://arxiv.org/abs/1806.10779
    """
    x = ops.convert_to_tensor(x)
    require_spatial(x.shape, "switchable normalization", argument="x")
    ndim, a, channels = _channel_axis(x, axis)
    epsilon = check_epsilon(epsilon)
    _check_param("mean_weights", mean_weights, (3,))
    _check_param("variance_weights", variance_weights, (3,))
    for name, param in (("gamma", gamma), ("beta", beta), ("moving_mean", moving_mean),
                        ("moving_variance", moving_variance)):
        _check_param(name, param, (channels,))
    mean_in, var_in = moments(x, complement([a], ndim, keep_batch=True))
    mean_ln, var_ln = moments(x, complement([], ndim, keep_batch=True))
    dtype = mean_in.dtype
    if training:
        mean_bn, var_bn = moments(x, complement([a], ndim), replica_sum=replica_sum)
    elif moving_mean is None or moving_variance is None:
        raise ValueError(
            error_message(
                "moving_mean" if moving_mean is None else "moving_variance",
                "per-channel batch statistics when training=False",
                f"moving_mean={None if moving_mean is None else '<tensor>'}, "
                f"moving_variance={None if moving_variance is None else '<tensor>'}, training=False",
                "Pass the moving mean and variance, or training=True to use batch statistics.",
            )
        )
    else:
        mean_bn = ops.cast(_per_channel(moving_mean, ndim, a, channels), dtype)
        var_bn = ops.cast(_per_channel(moving_variance, ndim, a, channels), dtype)
    wm = ops.softmax(ops.cast(ops.reshape(mean_weights, (3,)), dtype))
    wv = ops.softmax(ops.cast(ops.reshape(variance_weights, (3,)), dtype))
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    variance = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = normalize(
        x, mean, variance, epsilon=epsilon,
        gamma=_per_channel(gamma, ndim, a, channels),
        beta=_per_channel(beta, ndim, a, channels),
    )
    if not return_stats:
        return y
    return y, ops.reshape(mean_bn, (channels,)), ops.reshape(var_bn, (channels,))


# --------------------------------------------------------------------------- LRN


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, axis: int = -1):
    """Local response normalization across channels, with PyTorch's semantics.

    Formula: ``y_c = x_c / (k + alpha / size * sum_{j=c-size//2}^{c+(size-1)//2} x_j^2) ** beta``,
    where channels outside ``[0, C)`` count as zeros. Equal to
    ``torch.nn.functional.local_response_norm(x, size, alpha, beta, k)`` for
    channels-first ``x`` and ``axis=1``. TensorFlow's
    ``tf.nn.local_response_normalization(x, r, bias, a, b)`` is
    ``size=2r+1, k=bias, alpha=a*(2r+1), beta=b`` here (TF does not divide
    ``alpha`` by the window size).

    Args:
        x: input of rank >= 2, batch first.
        size: number of neighbouring channels summed over, a positive int. Default 5.
        alpha: scale of the sum of squares (divided by ``size``). Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant, > 0. Default 1.0 (AlexNet used k=2).
        axis: the channel axis. Default -1 (channels-last); 1 for channels-first.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> y = ops.convert_to_numpy(local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0))
        >>> y.astype("float64").round(4).tolist()    # x / (1 + x_{c-1}^2 + x_c^2 + x_{c+1}^2)
        [[0.1667, 0.1333, 0.2143]]

    Reference:
        Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NeurIPS 2012, section 3.3.
    """
    x = ops.convert_to_tensor(x)
    ndim, a, channels = _channel_axis(x, axis)
    size = check_positive_int("size", size, example=5, meaning="the number of channels in the window")
    alpha = check_real("alpha", alpha, minimum=0.0, example="1e-4")
    beta = check_real("beta", beta, example="0.75")
    k = check_real("k", k, minimum=0.0, strict=True, example="1.0")
    dtype = stats_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    square = ops.moveaxis(ops.square(xs), a, -1)
    padded = ops.pad(square, [[0, 0]] * (ndim - 1) + [[size // 2, (size - 1) // 2]])
    total = padded[..., 0:channels]
    for j in range(1, size):
        total = total + padded[..., j:j + channels]
    divisor = ops.power(k + (alpha / size) * total, beta)
    return ops.cast(xs / ops.moveaxis(divisor, -1, a), x.dtype)


# --------------------------------------------------------------------------- batch norm, training forms


def _batch_norm_train(x, *, axis, gamma, beta, epsilon, mask, virtual_batch_size, renorm, replica_sum=None):
    """Training-mode batch norm with optional ghost batches and renorm correction.

    Returns ``(y, mean, variance)`` with the statistics of shape ``(C,)``,
    averaged over the ghost batches. With ``replica_sum``, the statistics
    are the global batch's; with ghost batches too, each ghost batch keeps
    its own statistics (as on one device with the global batch, when each
    replica's batch is a multiple of the ghost size) and the returned
    averages are over every replica's ghost batches.
    """
    x = ops.convert_to_tensor(x)
    ndim, a, channels = _channel_axis(x, axis)
    epsilon = check_epsilon(epsilon)
    _check_param("gamma", gamma, (channels,))
    _check_param("beta", beta, (channels,))
    v = check_positive_int("virtual_batch_size", virtual_batch_size, example=32, allow_none=True,
                           meaning="the size of each ghost batch")
    dims = _dims(x)
    if v is not None:
        batch = x.shape[0]
        if batch is not None and batch % v:
            raise ValueError(
                error_message(
                    "virtual_batch_size",
                    "a divisor of the batch size, so that the batch splits into equal ghost batches",
                    f"virtual_batch_size={v} with a batch of {batch}",
                    f"Use one of {divisors(batch)}, or a batch size that is a multiple of {v} "
                    "(e.g. drop the last, smaller batch).",
                )
            )
        if mask is not None:
            mask = ops.reshape(ops.broadcast_to(ops.cast(mask, "float32"), ops.shape(x)), [-1, v] + dims[1:])
        x_work, c, rank = ops.reshape(x, [-1, v] + dims[1:]), a + 1, ndim + 1
        reduce_axes = [i for i in range(1, rank) if i != c]  # keep the ghost axis 0
    else:
        x_work, c, rank = x, a, ndim
        reduce_axes = complement([a], ndim)
    # Ghost batches never span replicas: only their average is synchronized (below).
    shift, residual_mean, variance = shifted_moments(
        x_work, reduce_axes, mask=mask, replica_sum=None if v is not None else replica_sum
    )
    mean = shift + residual_mean
    dtype = mean.dtype
    gamma_b = None if gamma is None else ops.cast(_broadcast(gamma, rank, [c], [channels]), dtype)
    beta_b = None if beta is None else ops.cast(_broadcast(beta, rank, [c], [channels]), dtype)
    if renorm is not None:
        renorm_mean, renorm_stddev, clipping = renorm
        floor = math.sqrt(epsilon)
        moving_std = ops.maximum(ops.cast(_broadcast(renorm_stddev, rank, [c], [channels]), dtype), floor)
        moving_mean = ops.cast(_broadcast(renorm_mean, rank, [c], [channels]), dtype)
        r = ops.sqrt(variance + epsilon) / moving_std
        d = (mean - moving_mean) / moving_std
        if "rmin" in clipping:
            r = ops.maximum(r, clipping["rmin"])
        if "rmax" in clipping:
            r = ops.minimum(r, clipping["rmax"])
        if "dmax" in clipping:
            d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
        r, d = ops.stop_gradient(r), ops.stop_gradient(d)
        # ((x - mean) / std * r + d) * gamma + beta, folded into the affine.
        gamma_b, beta_b = (r, d) if gamma_b is None else (r * gamma_b, d * gamma_b)
        beta_b = beta_b if beta is None else beta_b + ops.cast(_broadcast(beta, rank, [c], [channels]), dtype)
    # Subtract the shift, then the small residual mean: exact at large offsets.
    y = normalize(x_work, residual_mean, variance, shift=shift, gamma=gamma_b, beta=beta_b, epsilon=epsilon)
    if v is not None:
        y = ops.reshape(y, dims)
        if replica_sum is None:
            mean, variance = ops.mean(mean, axis=0), ops.mean(variance, axis=0)
        else:
            ghosts = ops.broadcast_to(ops.cast(_dims(mean)[0], dtype), ops.shape(mean)[1:])
            total_mean, total_variance, ghosts = ops.unstack(
                replica_sum(ops.stack([ops.sum(mean, axis=0), ops.sum(variance, axis=0), ghosts]))
            )
            mean, variance = total_mean / ghosts, total_variance / ghosts
    return y, ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,))


def ghost_batch_norm(
    x, virtual_batch_size: int, *, axis: int = -1, gamma=None, beta=None, epsilon: float = 1e-3,
    mask=None, return_stats: bool = False, replica_sum=None,
):
    """Ghost batch normalization: batch statistics per virtual sub-batch (training form).

    Formula: split the batch into ``B / virtual_batch_size`` consecutive
    ghost batches; normalize each with its own per-channel ``mean`` and
    ``var`` (over the ghost batch and the spatial axes):
    ``y = (x - mean_g) / sqrt(var_g + epsilon) * gamma + beta``. The returned
    statistics are the averages over the ghost batches (what the moving
    averages are updated with, as in TF 1's ``virtual_batch_size``).

    Args:
        x: input of rank >= 2, batch first; the batch size must be a multiple
            of ``virtual_batch_size``.
        virtual_batch_size: samples per ghost batch, a positive int.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        mask: optional tensor broadcastable to ``x``; masked-out elements do
            not count toward the statistics. Default None.
        return_stats: also return ``(mean, variance)`` of shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`).
            Each ghost batch still uses its own statistics (ghost batches are
            consecutive samples of one replica's batch); the returned
            averages are then over every replica's ghost batches, as for the
            global batch on one device. Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import batch_norm
        >>> x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
        >>> y = ops.convert_to_numpy(ghost_batch_norm(x, 4))
        >>> bool(np.allclose(y[:4], ops.convert_to_numpy(batch_norm(x[:4], training=True)), atol=1e-5))
        True

    Reference:
        Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
        generalization gap in large batch training of neural networks",
        NeurIPS 2017. https://arxiv.org/abs/1705.08741
    """
    if virtual_batch_size is None:
        raise ValueError(
            error_message("virtual_batch_size", "a positive integer", "virtual_batch_size=None",
                          "Pass the ghost batch size, e.g. virtual_batch_size=32, or use batch_norm.")
        )
    y, mean, variance = _batch_norm_train(
        x, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon, mask=mask,
        virtual_batch_size=virtual_batch_size, renorm=None, replica_sum=replica_sum,
    )
    return (y, mean, variance) if return_stats else y


def batch_renorm(
    x, renorm_mean, renorm_stddev, *, axis: int = -1, gamma=None, beta=None, epsilon: float = 1e-3,
    clipping=None, mask=None, virtual_batch_size=None, return_stats: bool = False, replica_sum=None,
):
    """Batch renormalization (training form): batch norm corrected toward moving statistics.

    Formula: with batch ``mean`` and ``std = sqrt(var + epsilon)``, and
    ``s = max(renorm_stddev, sqrt(epsilon))``:
    ``r = clip(std / s, rmin, rmax)``, ``d = clip((mean - renorm_mean) / s, -dmax, dmax)``
    (both without gradient), and
    ``y = ((x - mean) / std * r + d) * gamma + beta``. This is the
    computation of ``keras.layers.BatchNormalization(renorm=True)`` in training.

    Args:
        x: input of rank >= 2, batch first.
        renorm_mean: per-channel moving mean used for the correction, ``(C,)``.
        renorm_stddev: per-channel moving standard deviation, ``(C,)``.
        axis: the channel axis. Default -1.
        gamma: optional per-channel scale ``(C,)``. Default None.
        beta: optional per-channel offset ``(C,)``. Default None.
        epsilon: added to the variance. Default 1e-3.
        clipping: dict with optional keys ``rmax`` (default inf), ``rmin``
            (default 0) and ``dmax`` (default inf). Default None (no clipping).
        mask: optional tensor broadcastable to ``x``. Default None.
        virtual_batch_size: optional ghost batch size; ``r`` and ``d`` are
            then per ghost batch. Default None.
        return_stats: also return the batch ``(mean, variance)`` of shape ``(C,)``. Default False.
        replica_sum: optional cross-replica sum (:func:`normlab.distributed.replica_sum`):
            the batch statistics, and so ``r`` and ``d``, are the global
            batch's (with ghost batches, as in :func:`ghost_batch_norm`).
            Default None.

    Example:
        >>> import numpy as np
        >>> from normlab.ops import batch_norm
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 4)).astype("float32")
        >>> ones, zeros = np.ones(4, "float32"), np.zeros(4, "float32")
        >>> clip = {"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}          # r = 1, d = 0: plain batch norm
        >>> y = ops.convert_to_numpy(batch_renorm(x, zeros, ones, clipping=clip))
        >>> bool(np.allclose(y, ops.convert_to_numpy(batch_norm(x, training=True)), atol=1e-5))
        True

    Reference:
        Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence
        in Batch-Normalized Models", NeurIPS 2017. https://arxiv.org/abs/1702.03275
    """
    x = ops.convert_to_tensor(x)
    _, _, channels = _channel_axis(x, axis)
    _check_param("renorm_mean", renorm_mean, (channels,))
    _check_param("renorm_stddev", renorm_stddev, (channels,))
    y, mean, variance = _batch_norm_train(
        x, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon, mask=mask,
        virtual_batch_size=virtual_batch_size,
        renorm=(renorm_mean, renorm_stddev, check_renorm_clipping(clipping)), replica_sum=replica_sum,
    )
    return (y, mean, variance) if return_stats else y
