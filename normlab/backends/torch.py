"""PyTorch fast paths: ATen's fused normalization kernels, used only where
their result is exact to float rounding.

ATen on CPU (measured; see ``benchmarks/README.md``):

* ``native_group_norm`` reads the data once for its statistics and once to
  apply them, on channels-first (contiguous) and channels-last memory
  alike. Its statistics are not two-pass: on channels-last data it forms
  ``E[x^2] - E[x]^2`` (whole units wrong at an offset of 1000), and its
  Welford variant on contiguous data and its backward (``sum(dy * x)``,
  ``c2 * x + c3``) lose digits in proportion to the offset as well.
* ``native_layer_norm`` (trailing axes) and ``native_batch_norm`` behave
  alike: their statistics are fine or nearly so, but the apply step
  ``x * a + b`` and the backward round at the scale of the offset.

All of these errors grow like ``eps * (1 + mean^2 / (var + epsilon))``
(relative), and the kernels return ``mean`` and ``rstd``: each hook runs
the kernel once, and keeps the result only where ``(mean * rstd)^2 <= 1``
for every slice (the offset no larger than the spread, where the kernel's
error is that of the two-pass formula, measured within 1e-6 relative).
Otherwise it subtracts an accurate per-slice mean (a plain ``torch.sum``,
without gradient: the result does not depend on a per-slice shift) and runs
the kernel again on the centered data, where the check then holds; if it
still fails (NaN or inf inputs) the hook declines and the general path
runs.

Channels-last data ``(N, ..., C)`` is viewed without copying as a
``channels_last`` tensor of shape ``(N, C, S, 1)``; channels-first data
``(N, C, ...)`` as a contiguous ``(N, C, S)``. Other layouts (a channel axis
in the middle of a rank >= 4 tensor, non-contiguous strides, layer norm on
non-trailing axes) decline.

Statistics are in float32 at least: float16 and bfloat16 inputs are upcast
once before the kernel and the result is cast back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from keras import ops

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Largest ``(mean * rstd)^2`` for which a kernel's result is kept.
MAX_OFFSET_RATIO = 1.0

#: ATen's channels-last batch norm kernels vectorize over channels in blocks
#: of 8 floats and fall back to scalar code for the rest: measured on
#: (32, 676, C) float32, C = 8, 16, 24 run 6-8x faster than C = 4, 10, 12, 20.
#: Channels-last batch norm with a channel count that is not a multiple of
#: this runs as a few composite ops instead (:func:`_composite_batch_norm`).
CHANNEL_BLOCK = 8

#: Channels-last instance norm's backward runs one batch-norm backward per
#: sample (see :func:`_instance_norm_backward`) for batches up to this size.
MAX_SAMPLE_LOOP = 64

#: Channels-last instance norm's forward also runs per sample (one ATen
#: batch norm each) where a sample has fewer positions than this: ATen's
#: channels-last group-norm forward costs 2-3 ns per element there against
#: 0.6-0.9 ns per sample loop (measured: (8, 28, 28, 128) 2.2 ms vs 0.8 ms,
#: (8, 14, 14, 512) 1.8 ms vs 0.55 ms), but 0.25-0.4 ns at 3136 positions
#: and more ((8, 56, 56, 256) 2.3 ms vs 4.5 ms).
MAX_SAMPLE_LOOP_POSITIONS = 2048

#: Longest reduction handed to ATen. Its CPU kernels accumulate sums
#: sequentially (not pairwise): at 2**16 terms the statistics and parameter
#: gradients are measured within 5e-6 relative, at 2**18 only within 2e-5.
MAX_REDUCTION = 2**16


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _param(param, dtype):
    if param is None:
        return None
    param = ops.convert_to_tensor(param)
    return param if param.dtype == dtype else param.to(dtype)


def _usable(x) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.dtype in _FLOATS
        and x.ndim >= 2
        and x.numel() > 0
        and x.is_contiguous()
    )


def _exact(mean, rstd) -> bool:
    """Whether every slice's offset is within its spread (False on NaN)."""
    with torch.no_grad():
        ratio = torch.square(mean.detach() * rstd.detach()).max()
    return bool(ratio <= MAX_OFFSET_RATIO)


def _kernel_view(x, axis):
    """``x`` as ``(N, C, S, 1)``: channels_last strides for a last channel
    axis, contiguous for channel axis 1. None for other layouts."""
    n, c = x.shape[0], x.shape[axis]
    s = x.numel() // (n * c)
    if axis == x.ndim - 1:
        return x.view(n, s, 1, c).permute(0, 3, 1, 2)
    if axis == 1:
        return x.view(n, c, s, 1)
    return None


def _upcast(x):
    compute = _compute_dtype(x.dtype)
    return x if x.dtype == compute else x.to(compute)


def _downcast(y, like):
    return y if y.dtype == like.dtype else y.to(like.dtype)


class _ChannelsLastGroupNorm(torch.autograd.Function):
    """``native_group_norm`` on channels_last data, whose backward always
    asks ATen for dX: its channels-last backward kernel crashes (segfault,
    torch 2.13 CPU) when only the parameters' gradients are requested, as in
    a model's first layer. With one channel per group (instance norm) the
    backward is a batch-norm backward per sample instead (faster)."""

    @staticmethod
    def forward(ctx, x4, gamma, beta, n, c, s, groups, epsilon):
        if _per_sample(n, c, groups) and s < MAX_SAMPLE_LOOP_POSITIONS:
            y, mean, rstd = _instance_norm_forward(x4, gamma, beta, epsilon)
        else:
            y, mean, rstd = torch.native_group_norm(x4, gamma, beta, n, c, s, groups, epsilon)
        ctx.save_for_backward(x4, gamma, mean, rstd)
        ctx.sizes = (n, c, s, groups)
        ctx.epsilon = epsilon
        ctx.has_beta = beta is not None
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        x4, gamma, mean, rstd = ctx.saved_tensors
        n, c, s, groups = ctx.sizes
        need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]
        mask = [True, gamma is not None and need_gamma, ctx.has_beta and need_beta]
        dy = dy.contiguous(memory_format=torch.channels_last)
        if _per_sample(n, c, groups):
            dx, dgamma, dbeta = _instance_norm_backward(dy, x4, mean, rstd, gamma, mask, ctx.epsilon)
        else:
            dx, dgamma, dbeta = torch.ops.aten.native_group_norm_backward(
                dy, x4, mean, rstd, gamma, n, c, s, groups, mask
            )
        return (dx if need_x else None), dgamma, dbeta, None, None, None, None, None


def _per_sample(n, c, groups):
    """Whether channels-last instance norm runs as a batch norm per sample
    (ATen's channels-last batch-norm kernels vectorize over channels in
    blocks of :data:`CHANNEL_BLOCK`)."""
    return groups == c and c % CHANNEL_BLOCK == 0 and n <= MAX_SAMPLE_LOOP


def _instance_norm_forward(x4, gamma, beta, epsilon):
    """Channels-last instance norm as one ATen batch norm per sample (see
    :data:`MAX_SAMPLE_LOOP_POSITIONS`), written into one output; returns
    ``(y, mean, rstd)`` as ``native_group_norm`` does."""
    n, c = x4.shape[0], x4.shape[1]
    x3 = x4.permute(0, 2, 3, 1).reshape(n, -1, c)  # free: x4 is a channels_last view
    y3 = torch.empty_like(x3)
    mean, rstd = x3.new_empty(n, c), x3.new_empty(n, c)
    for i in range(n):
        y3[i], mean[i], rstd[i] = torch.native_batch_norm(x3[i], gamma, beta, None, None, True, 0.0, epsilon)
    return y3.view(n, -1, 1, c).permute(0, 3, 1, 2), mean, rstd


def _instance_norm_backward(dy4, x4, mean, rstd, gamma, mask, epsilon):
    """Channels-last instance norm's backward as one batch-norm backward per sample.

    Instance norm of one sample is batch norm of its ``(S, C)`` slice, and
    ATen's channels-last batch-norm backward (vectorized over channels) is
    3-4x faster than its channels-last group-norm backward with one channel
    per group; it takes the forward's saved mean and rstd, and centers ``x``
    by that mean itself. The per-sample input gradients are stacked (one
    extra pass); the parameter gradients summed.
    """
    n, c = x4.shape[0], x4.shape[1]
    x3 = x4.permute(0, 2, 3, 1).reshape(n, -1, c)  # free: x4 is a channels_last view
    dy3 = dy4.permute(0, 2, 3, 1).reshape(n, -1, c)
    dxs, dgamma, dbeta = [], None, None
    for i in range(n):
        dx, dg, db = torch.ops.aten.native_batch_norm_backward(
            dy3[i], x3[i], gamma, None, None, mean[i], rstd[i], True, epsilon, mask
        )
        dxs.append(dx)
        if mask[1]:
            dgamma = dg if dgamma is None else dgamma + dg
        if mask[2]:
            dbeta = db if dbeta is None else dbeta + db
    dx = torch.stack(dxs).view(n, -1, 1, c).permute(0, 3, 1, 2)
    return dx, dgamma, dbeta


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    x4 = _kernel_view(x, axis)
    if x4 is None:
        return None
    n, c, s = x4.shape[0], x4.shape[1], x4.shape[2]
    if max(s * (c // groups), n * s) > MAX_REDUCTION:
        return None
    x4 = _upcast(x4)
    gamma, beta = _param(gamma, x4.dtype), _param(beta, x4.dtype)
    kernel = _ChannelsLastGroupNorm.apply if axis == x.ndim - 1 else torch.native_group_norm
    y, mean, rstd = kernel(x4, gamma, beta, n, c, s, groups, epsilon)
    if not _exact(mean, rstd):
        with torch.no_grad():
            sums = x4.sum(dim=(2, 3))  # (N, C), cascade-summed
            shift = sums.view(n, groups, c // groups).sum(dim=2, keepdim=True) / (s * (c // groups))
            shift = shift.expand(n, groups, c // groups).reshape(n, c, 1, 1)
        y, mean, rstd = kernel(x4 - shift, gamma, beta, n, c, s, groups, epsilon)
        if not _exact(mean, rstd):
            return None
    if axis == x.ndim - 1:
        y = y.permute(0, 2, 3, 1)
    return _downcast(y.reshape(x.shape), x)


def layer_norm(x, *, axes, gamma, beta, epsilon):
    if not _usable(x):
        return None
    k = len(axes)
    if list(axes) != list(range(x.ndim - k, x.ndim)):
        return None  # only trailing axes are rows of ATen's kernel
    shape = tuple(x.shape[x.ndim - k:])
    if max(math.prod(shape), x.numel() // math.prod(shape)) > MAX_REDUCTION:
        return None
    xc = _upcast(x)
    gamma, beta = _param(gamma, xc.dtype), _param(beta, xc.dtype)
    y, mean, rstd = torch.native_layer_norm(xc, shape, gamma, beta, epsilon)
    if not _exact(mean, rstd):
        with torch.no_grad():
            shift = xc.view(-1, math.prod(shape)).mean(dim=1, keepdim=True)
        centered = (xc.view(-1, math.prod(shape)) - shift).view(xc.shape)
        y, mean, rstd = torch.native_layer_norm(centered, shape, gamma, beta, epsilon)
        if not _exact(mean, rstd):
            return None
    return _downcast(y, x)


def _batch_norm(x4, gamma, beta, epsilon, count):
    """ATen's training batch norm; returns ``(y, mean, biased variance)``.

    With momentum 1 the running buffers receive the batch statistics: the
    mean, and the unbiased variance (rescaled to the biased one here)."""
    c = x4.shape[1]
    running_mean = torch.zeros(c, dtype=x4.dtype)
    running_var = torch.ones(c, dtype=x4.dtype)
    y = F.batch_norm(x4, running_mean, running_var, gamma, beta, True, 1.0, epsilon)
    variance = torch.clamp(running_var * ((count - 1) / count), min=0.0)
    return y, running_mean, variance


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    if not _usable(x):
        return None
    c = x.shape[axis]
    count = x.numel() // c
    if count < 2 or count > MAX_REDUCTION or not epsilon > 0:
        # ATen's running variance is unbiased (undefined for one value), and
        # its training batch norm rejects epsilon = 0.
        return None
    if axis == x.ndim - 1 and c % CHANNEL_BLOCK:
        return _composite_batch_norm(x, gamma, beta, epsilon)
    x4 = _kernel_view(x, axis)
    if x4 is None:
        return None
    x4 = _upcast(x4)
    gamma, beta = _param(gamma, x4.dtype), _param(beta, x4.dtype)
    # ATen's batch mean is two-pass: accurate enough to center by.
    result = _exact_or_centered(lambda t: _batch_norm(t, gamma, beta, epsilon, count), x4,
                                lambda shift: shift.view(1, c, 1, 1), epsilon)
    if result is None:
        return None
    y, mean, variance = result
    if axis == x.ndim - 1:
        y = y.permute(0, 2, 3, 1)
    return _downcast(y.reshape(x.shape), x), mean, variance


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Batch norm over every axis but the last, from plain moments, with a
    closed-form backward: ``E[x]`` and ``E[x^2]`` (one reduction each),
    ``y = x * scale + (beta - mean * scale)`` in one pass, and
    ``dx = scale * (dy - mean(dy)) - scale * rstd^2 * mean(dy * xc) * xc``
    from two reductions. Exact where ``(mean * rstd)^2 <= 1`` (the caller
    checks and centers otherwise). Also returns the batch mean and biased
    variance, whose cotangents (if any) flow into ``dx``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, epsilon):
        ctx.set_materialize_grads(False)
        dims = tuple(range(x.ndim - 1))
        mean = x.mean(dims)
        variance = torch.clamp((x * x).mean(dims) - mean * mean, min=0.0)
        rstd = torch.rsqrt(variance + epsilon)
        scale = rstd if gamma is None else rstd * gamma
        offset = -mean * scale if beta is None else beta - mean * scale
        y = torch.addcmul(offset, x, scale)
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.has_beta = beta is not None
        return y, mean, variance

    @staticmethod
    def backward(ctx, dy, dmean, dvariance):
        x, gamma, mean, rstd = ctx.saved_tensors
        dims = tuple(range(x.ndim - 1))
        count = x.numel() // x.shape[-1]
        scale = rstd if gamma is None else rstd * gamma
        k_x = torch.zeros_like(mean)  # dx = dy * scale + x * k_x + k_0
        k_0 = torch.zeros_like(mean)
        dgamma = dbeta = None
        if dy is not None:
            sdy = dy.sum(dims)
            sdyxc = (dy * x).sum(dims) - mean * sdy  # sum dy * (x - mean)
            k_x = -scale * rstd * rstd * sdyxc / count
            k_0 = -k_x * mean - scale * sdy / count
            dgamma = sdyxc * rstd if gamma is not None and ctx.needs_input_grad[1] else None
            dbeta = sdy if ctx.has_beta and ctx.needs_input_grad[2] else None
        if dvariance is not None:  # d var / dx = 2 (x - mean) / count
            k_x = k_x + 2.0 * dvariance / count
            k_0 = k_0 - 2.0 * dvariance * mean / count
        if dmean is not None:
            k_0 = k_0 + dmean / count
        dx = x * k_x + k_0
        if dy is not None:
            dx = torch.addcmul(dx, dy, scale)
        return dx, dgamma, dbeta, None


def _composite_batch_norm(x, gamma, beta, epsilon):
    """Channels-last batch norm for few channels (see :data:`CHANNEL_BLOCK`).

    :class:`_ChannelsLastBatchNorm` on the input, kept where every channel
    has ``(mean * rstd)^2 <= 1`` (the kernels' bound); otherwise again on the
    input minus that mean (no gradient through the shift: the result does
    not depend on it).
    """
    xc = _upcast(x)
    gamma, beta = _param(gamma, xc.dtype), _param(beta, xc.dtype)
    result = _exact_or_centered(lambda t: _ChannelsLastBatchNorm.apply(t, gamma, beta, epsilon),
                                xc, lambda shift: shift, epsilon)
    if result is None:
        return None
    y, mean, variance = result
    return _downcast(y, x), mean, variance


def _exact_or_centered(norm, x, as_shift, epsilon):
    """``norm(x) -> (y, mean, variance)`` kept where every channel has
    ``(mean * rstd)^2 <= 1``; otherwise ``norm`` again on ``x`` minus that
    mean (``as_shift`` shapes it to broadcast against ``x``; no gradient
    through it: the result does not depend on the shift). None if that
    still fails (NaN or inf inputs)."""
    y, mean, variance = norm(x)
    if _exact(mean, torch.rsqrt(variance + epsilon)):
        return y, mean, variance
    shift = mean.detach()
    y, residual, variance = norm(x - as_shift(shift))
    if not _exact(residual, torch.rsqrt(variance + epsilon)):
        return None
    return y, shift + residual, variance
