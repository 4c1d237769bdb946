"""Float64 NumPy references: the oracles every normlab op is tested against.

Each function is written the plain way, straight from the paper's formula,
in float64, with no attempt at speed. They accept and return NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import cast, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

_Array = NDArray[np.float64]


@overload
def _f64(x: None) -> None: ...
@overload
def _f64(x: ArrayLike) -> _Array: ...
def _f64(x: ArrayLike | None) -> _Array | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def _affine(y: _Array, gamma: ArrayLike | None, beta: ArrayLike | None, shape: Sequence[int]) -> _Array:
    if gamma is not None:
        y = y * _f64(gamma).reshape(shape)
    if beta is not None:
        y = y + _f64(beta).reshape(shape)
    return y


def _channel_shape(ndim: int, axis: int, channels: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def moments(x: ArrayLike, axes: Iterable[int], mask: ArrayLike | None = None) -> tuple[_Array, _Array]:
    """Mean and biased variance over ``axes`` (kept as size-1 dims), float64; ``mask`` broadcasts
    to ``x``, and each entry counts by its truth value (0 or False: left out), as in the ops."""
    x = _f64(x)
    axes = tuple(axes)
    w = np.ones_like(x) if mask is None else np.broadcast_to(np.asarray(mask) != 0, x.shape).astype("float64")
    count = np.maximum(w.sum(axis=axes, keepdims=True), 1.0)
    mean = (w * x).sum(axis=axes, keepdims=True) / count
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / count
    return mean, var


def group_norm(x: ArrayLike, groups: int, axis: int = -1, gamma: ArrayLike | None = None,
               beta: ArrayLike | None = None, epsilon: float = 1e-3) -> _Array:
    """Group normalization (Wu & He 2018), channels on ``axis``; groups=-1 is instance norm."""
    x = _f64(x)
    axis = axis % x.ndim
    channels = x.shape[axis]
    groups = channels if groups == -1 else groups
    moved = np.moveaxis(x, axis, -1)  # (N, ..., C)
    grouped = moved.reshape(moved.shape[:-1] + (groups, channels // groups))
    reduce = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean, var = moments(grouped, reduce)
    y = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(moved.shape)
    y = np.moveaxis(y, -1, axis)
    return _affine(y, gamma, beta, _channel_shape(x.ndim, axis, channels))


def instance_norm(x: ArrayLike, axis: int = -1, gamma: ArrayLike | None = None, beta: ArrayLike | None = None,
                  epsilon: float = 1e-3) -> _Array:
    """Instance normalization (Ulyanov et al. 2016): per sample and channel."""
    x = _f64(x)
    axis = axis % x.ndim
    reduce = [a for a in range(1, x.ndim) if a != axis]
    mean, var = moments(x, reduce)
    y = (x - mean) / np.sqrt(var + epsilon)
    return _affine(y, gamma, beta, _channel_shape(x.ndim, axis, x.shape[axis]))


def adaptive_instance_norm(content: ArrayLike, style: ArrayLike, axis: int = -1, epsilon: float = 1e-5) -> _Array:
    """Adaptive instance normalization (Huang & Belongie 2017): the content's
    per-sample, per-channel mean and standard deviation replaced by the style's."""
    content, style = _f64(content), _f64(style)
    axis = axis % content.ndim
    reduce = tuple(a for a in range(1, content.ndim) if a != axis)
    mean, var = moments(content, reduce)
    style_mean, style_var = moments(style, reduce)
    return (content - mean) / np.sqrt(var + epsilon) * np.sqrt(style_var + epsilon) + style_mean


def layer_norm(x: ArrayLike, axis: int | Sequence[int] = -1, gamma: ArrayLike | None = None,
               beta: ArrayLike | None = None, epsilon: float = 1e-3) -> _Array:
    """Layer normalization (Ba et al. 2016) over ``axis`` (int or list)."""
    x = _f64(x)
    axes = sorted(a % x.ndim for a in np.atleast_1d(axis))
    mean, var = moments(x, axes)
    y = (x - mean) / np.sqrt(var + epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    return _affine(y, gamma, beta, shape)


def batch_norm(x: ArrayLike, axis: int = -1, gamma: ArrayLike | None = None, beta: ArrayLike | None = None,
               epsilon: float = 1e-3, mean: ArrayLike | None = None, variance: ArrayLike | None = None,
               mask: ArrayLike | None = None) -> tuple[_Array, _Array, _Array]:
    """Batch normalization (Ioffe & Szegedy 2015).

    With ``mean``/``variance`` None, uses batch statistics (training form) and
    returns ``(y, batch_mean, batch_variance)``; otherwise uses the given
    statistics (inference form) and returns ``(y, mean, variance)``. A
    ``mask`` broadcasts to ``x`` by NumPy's rules (trailing axes first), as
    in :func:`normlab.ops.batch_norm`: a Keras mask of shape ``(batch,
    time)`` for ``x`` of ``(batch, time, channels)`` is ``mask[..., None]``.
    """
    x = _f64(x)
    axis = axis % x.ndim
    shape = _channel_shape(x.ndim, axis, x.shape[axis])
    if mean is None:
        reduce = [a for a in range(x.ndim) if a != axis]
        m, v = moments(x, reduce, mask)
    else:
        m, v = _f64(mean).reshape(shape), cast(_Array, _f64(variance)).reshape(shape)
    y = _affine((x - m) / np.sqrt(v + epsilon), gamma, beta, shape)
    return y, m.reshape(-1), v.reshape(-1)


def _channels_last(x: ArrayLike, axis: int) -> tuple[_Array, int]:
    """``x`` as float64 with the channel axis moved last, and that axis."""
    x = _f64(x)
    axis = axis % x.ndim
    return np.moveaxis(x, axis, -1), axis


def rms_norm(x: ArrayLike, axis: int | Sequence[int] = -1, gamma: ArrayLike | None = None,
             beta: ArrayLike | None = None, epsilon: float = 1e-6) -> _Array:
    """RMS normalization (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * gamma + beta``."""
    x = _f64(x)
    axes = tuple(sorted(a % x.ndim for a in np.atleast_1d(axis)))
    rms = np.sqrt((x ** 2).mean(axis=axes, keepdims=True) + epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    return _affine(x / rms, gamma, beta, shape)


def dynamic_tanh(x: ArrayLike, alpha: ArrayLike = 0.5, axis: int | Sequence[int] = -1, gamma: ArrayLike | None = None,
                 beta: ArrayLike | None = None) -> _Array:
    """Dynamic Tanh (Zhu et al. 2025): ``tanh(alpha * x) * gamma + beta``, ``gamma``/``beta`` on ``axis``."""
    x = _f64(x)
    axes = {a % x.ndim for a in np.atleast_1d(axis)}
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    return _affine(np.tanh(float(np.ravel(alpha)[0]) * x), gamma, beta, shape)


def filter_response_norm(x: ArrayLike, axis: int = -1, gamma: ArrayLike | None = None, beta: ArrayLike | None = None,
                         epsilon: float = 1e-6, learned_epsilon: ArrayLike = 0.0,
                         tau: ArrayLike | None = None) -> _Array:
    """Filter response normalization (Singh & Krishnan 2019), channel ``axis``, then TLU if ``tau``."""
    moved, axis = _channels_last(x, axis)
    spatial = tuple(range(1, moved.ndim - 1))
    nu2 = (moved ** 2).mean(axis=spatial, keepdims=True) if spatial else moved ** 2
    y = moved / np.sqrt(nu2 + epsilon + abs(float(np.ravel(learned_epsilon)[0])))
    y = _affine(y, gamma, beta, [-1])
    if tau is not None:
        y = np.maximum(y, _f64(tau))
    return np.moveaxis(y, -1, axis)


def tlu(x: ArrayLike, tau: ArrayLike, axis: int = -1, alpha: ArrayLike | None = None) -> _Array:
    """Thresholded linear unit: ``max(x, tau)`` or ``max(x, alpha * x + tau)``, per channel."""
    moved, axis = _channels_last(x, axis)
    floor = _f64(tau) if alpha is None else _f64(alpha) * moved + _f64(tau)
    return np.moveaxis(np.maximum(moved, floor), -1, axis)


def evo_norm_b0(x: ArrayLike, axis: int = -1, v: ArrayLike | None = None, gamma: ArrayLike | None = None,
                beta: ArrayLike | None = None, epsilon: float = 1e-3,
                moving_variance: ArrayLike | None = None) -> tuple[_Array, _Array]:
    """EvoNorm-B0 (Liu et al. 2020, timm's form); batch variance if ``moving_variance`` is None.

    Returns ``(y, variance_used)``.
    """
    moved, axis = _channels_last(x, axis)
    channels = moved.shape[-1]
    if moving_variance is None:
        var = moved.reshape(-1, channels).var(axis=0)
    else:
        var = _f64(moving_variance)
    spatial = tuple(range(1, moved.ndim - 1))
    instance_std = np.sqrt(moved.var(axis=spatial, keepdims=True) + epsilon)
    v = np.ones(channels) if v is None else _f64(v)
    y = moved / np.maximum(np.sqrt(var + epsilon), v * moved + instance_std)
    return np.moveaxis(_affine(y, gamma, beta, [-1]), -1, axis), var


def evo_norm_s0(x: ArrayLike, groups: int, axis: int = -1, v: ArrayLike | None = None, gamma: ArrayLike | None = None,
                beta: ArrayLike | None = None, epsilon: float = 1e-5) -> _Array:
    """EvoNorm-S0 (Liu et al. 2020): ``x * sigmoid(v x) / group_std * gamma + beta``."""
    moved, axis = _channels_last(x, axis)
    channels = moved.shape[-1]
    groups = channels if groups == -1 else groups
    grouped = moved.reshape(moved.shape[0], -1, groups, channels // groups)
    std = np.sqrt(grouped.var(axis=(1, 3), keepdims=True) + epsilon)
    std = np.broadcast_to(std, grouped.shape).reshape(moved.shape)
    v = np.ones(channels) if v is None else _f64(v)
    y = moved / (1.0 + np.exp(-v * moved)) / std
    return np.moveaxis(_affine(y, gamma, beta, [-1]), -1, axis)


def switchable_norm(x: ArrayLike, mean_weights: ArrayLike, variance_weights: ArrayLike, axis: int = -1,
                    gamma: ArrayLike | None = None, beta: ArrayLike | None = None, epsilon: float = 1e-3,
                    moving_mean: ArrayLike | None = None,
                    moving_variance: ArrayLike | None = None) -> tuple[_Array, _Array, _Array]:
    """Switchable normalization (Luo et al. 2018): softmax mix of IN, LN and BN statistics.

    Batch statistics from ``x`` if ``moving_mean`` is None. Returns
    ``(y, batch_mean, batch_variance)``.
    """
    moved, axis = _channels_last(x, axis)
    channels = moved.shape[-1]
    spatial = tuple(range(1, moved.ndim - 1))
    stats = [moments(moved, spatial), moments(moved, tuple(range(1, moved.ndim)))]
    if moving_mean is None:
        bn = moments(moved, tuple(range(moved.ndim - 1)))
    else:
        bn = (_f64(moving_mean), cast(_Array, _f64(moving_variance)))
    stats.append(bn)

    def softmax(w: ArrayLike) -> _Array:
        e = np.exp(_f64(w) - np.max(w))
        return cast(_Array, e / e.sum())

    wm, wv = softmax(mean_weights), softmax(variance_weights)
    mean = sum(w * s[0] for w, s in zip(wm, stats))
    var = sum(w * s[1] for w, s in zip(wv, stats))
    y = _affine((moved - mean) / np.sqrt(var + epsilon), gamma, beta, [-1])
    return np.moveaxis(y, -1, axis), np.reshape(bn[0], channels), np.reshape(bn[1], channels)


def local_response_norm(x: ArrayLike, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        axis: int = -1) -> _Array:
    """Local response normalization (Krizhevsky et al. 2012), PyTorch's form, one channel at a time."""
    moved, axis = _channels_last(x, axis)
    channels = moved.shape[-1]
    y = np.empty_like(moved)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
        total = (moved[..., lo:hi] ** 2).sum(axis=-1)
        y[..., c] = moved[..., c] / (k + alpha / size * total) ** beta
    return np.moveaxis(y, -1, axis)


def batch_renorm(x: ArrayLike, renorm_mean: ArrayLike | None, renorm_stddev: ArrayLike | None, axis: int = -1,
                 gamma: ArrayLike | None = None, beta: ArrayLike | None = None, epsilon: float = 1e-3,
                 clipping: Mapping[str, float] | None = None,
                 virtual_batch_size: int | None = None) -> tuple[_Array, _Array, _Array]:
    """Batch renormalization (Ioffe 2017), training form, optionally per ghost batch.

    Returns ``(y, mean, variance)``, the statistics averaged over ghost batches.
    """
    moved, axis = _channels_last(x, axis)
    clipping = clipping or {}
    v = virtual_batch_size or moved.shape[0]
    if moved.shape[0] % v:
        raise ValueError(f"virtual_batch_size={v} does not divide the batch of {moved.shape[0]}")
    ys, means, variances = [], [], []
    for start in range(0, moved.shape[0], v):
        part = moved[start:start + v]
        mean, var = moments(part, tuple(range(part.ndim - 1)))
        y = (part - mean) / np.sqrt(var + epsilon)
        if renorm_mean is not None:
            s = np.maximum(cast(_Array, _f64(renorm_stddev)), np.sqrt(epsilon))
            known, s = s > 0, np.where(s > 0, s, 1.0)  # a moving std of 0 (epsilon=0): r = 1, d = 0
            r = np.where(known, np.sqrt(var + epsilon) / s, 1.0)
            d = np.where(known, (mean - _f64(renorm_mean)) / s, 0.0)
            r = np.clip(r, clipping.get("rmin", 0.0), clipping.get("rmax", np.inf))
            d = np.clip(d, -clipping.get("dmax", np.inf), clipping.get("dmax", np.inf))
            y = y * r + d
        ys.append(_affine(y, gamma, beta, [-1]))
        means.append(mean.reshape(-1))
        variances.append(var.reshape(-1))
    y = np.moveaxis(np.concatenate(ys), -1, axis)
    return y, np.mean(means, axis=0), np.mean(variances, axis=0)


def ghost_batch_norm(x: ArrayLike, virtual_batch_size: int | None, axis: int = -1, gamma: ArrayLike | None = None,
                     beta: ArrayLike | None = None, epsilon: float = 1e-3) -> tuple[_Array, _Array, _Array]:
    """Ghost batch normalization (Hoffer et al. 2017): batch norm per consecutive sub-batch.

    Returns ``(y, mean, variance)``, the statistics averaged over ghost batches.
    """
    return batch_renorm(x, None, None, axis, gamma, beta, epsilon, virtual_batch_size=virtual_batch_size)


# --------------------------------------------------------------------------- weight reparametrizations


def _kernel_matrix(kernel: ArrayLike) -> _Array:
    """A kernel as a float64 ``(fan_in, out)`` matrix (output units on the last axis)."""
    kernel = _f64(kernel)
    return kernel.reshape(-1, kernel.shape[-1])


def standardize_weight(kernel: ArrayLike, epsilon: float = 1e-6, gain: ArrayLike | None = None) -> _Array:
    """Weight standardization (Qiao et al. 2019) over the fan-in (all axes but the last).

    ``(w - mean) / sqrt(var + epsilon) * gain``; ``gain`` per output unit.
    """
    kernel = _f64(kernel)
    w = _kernel_matrix(kernel)
    y: _Array = (w - w.mean(axis=0)) / np.sqrt(w.var(axis=0) + epsilon)
    if gain is not None:
        y = y * _f64(gain).reshape(-1)
    return y.reshape(kernel.shape)


def scaled_standardize_weight(kernel: ArrayLike, gain: ArrayLike | None = None, gamma: float = 1.0,
                              epsilon: float = 1e-6) -> _Array:
    """Scaled weight standardization (Brock et al. 2021; timm's ScaledStdConv2d).

    ``(w - mean) / sqrt(var + epsilon) * gain * gamma / sqrt(fan_in)``.
    """
    fan_in = _kernel_matrix(kernel).shape[0]
    out = _f64(kernel).shape[-1]
    gain = np.ones(out) if gain is None else _f64(gain).reshape(-1)
    return standardize_weight(kernel, epsilon, gain * gamma / np.sqrt(fan_in))


def weight_norm(v: ArrayLike, g: ArrayLike | None = None) -> _Array:
    """Weight normalization (Salimans & Kingma 2016): ``g * v / ||v||`` per output unit."""
    v = _f64(v)
    w: _Array = _kernel_matrix(v)
    w = w / np.linalg.norm(w, axis=0)
    if g is not None:
        w = w * _f64(g).reshape(-1)
    return w.reshape(v.shape)


def weight_norm_data_init(pre_activations: ArrayLike, axis: int = -1, epsilon: float = 1e-10) -> tuple[_Array, _Array]:
    """The paper's data-dependent initialization from ``t = x . v / ||v||``.

    Returns ``(g, bias)`` with ``g = 1 / sqrt(var(t) + epsilon)`` and
    ``bias = -mean(t) * g``, statistics per unit over all other axes.
    """
    t = np.moveaxis(_f64(pre_activations), axis, -1)
    t = t.reshape(-1, t.shape[-1])
    g = 1.0 / np.sqrt(t.var(axis=0) + epsilon)
    return g, -t.mean(axis=0) * g


def power_iteration(kernel: ArrayLike, u: ArrayLike, iterations: int = 1) -> tuple[_Array, _Array, float]:
    """Power iteration as in Miyato et al. 2018 / TF Addons / Keras, in float64.

    ``W`` is the kernel as ``(fan_in, out)``; ``iterations`` times
    ``v = unit(u W^T)``, ``u = unit(v W)`` (zero iterations: only ``v``);
    ``sigma = v W u^T``. Returns ``(u, v, sigma)``.
    """
    w = _kernel_matrix(kernel)
    u_row: _Array = _f64(u).reshape(1, -1)
    u_row = u_row / np.linalg.norm(u_row)
    for _ in range(iterations):
        v: _Array = u_row @ w.T
        v = v / np.linalg.norm(v)
        u_row = v @ w
        u_row = u_row / np.linalg.norm(u_row)
    if iterations == 0:
        v = u_row @ w.T
        v = v / np.linalg.norm(v)
    return u_row, v, float((v @ w @ u_row.T)[0, 0])


def spectral_norm(kernel: ArrayLike, u: ArrayLike, power_iterations: int = 1) -> tuple[_Array, _Array, float]:
    """Spectral normalization (Miyato et al. 2018): ``(kernel / sigma, u, sigma)``."""
    u, _, sigma = power_iteration(kernel, u, power_iterations)
    return _f64(kernel) / sigma, u, sigma


def top_singular_value(kernel: ArrayLike) -> float:
    """The largest singular value of the kernel as a ``(fan_in, out)`` matrix (SVD)."""
    return float(np.linalg.svd(_kernel_matrix(kernel), compute_uv=False)[0])


def conv(x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None, groups: int = 1) -> _Array:
    """Float64 "valid" N-D convolution, channels-last, stride 1, as Keras computes it.

    ``x`` is ``(N, *spatial, C)``, ``kernel`` is ``(*kernel_size, C // groups, F)``
    (Keras' layout); returns ``(N, *out, F)``.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    x, kernel = _f64(x), _f64(kernel)
    rank = kernel.ndim - 2
    windows = sliding_window_view(x, kernel.shape[:rank], axis=tuple(range(1, rank + 1)))
    # windows: (N, *out, C, *kernel_size)
    cin, cout = kernel.shape[-2], kernel.shape[-1] // groups
    contract = (list(range(rank + 1, 2 * rank + 2)), list(range(rank + 1)))
    outputs = []
    for g in range(groups):
        part = windows[(slice(None),) * (rank + 1) + (slice(g * cin, (g + 1) * cin),)]
        k = np.moveaxis(kernel[..., g * cout:(g + 1) * cout], -2, 0)
        outputs.append(np.tensordot(part, k, axes=contract))
    y = np.concatenate(outputs, axis=-1)
    return y if bias is None else y + _f64(bias)
