"""The torch fast paths' own autograd functions and layout helpers: ATen's
kernels on channels-last data where ATen alone is slow or crashes (see
:mod:`normlab.backends.torch` for the numerics: every kernel here sees data
already centered, or centers each sample itself, by the hook's shift).

Eager only: the hooks decline while a compiler or exporter traces, so the
batch size here is always an int (the per-sample loops need one).
"""

from __future__ import annotations

import threading

import torch

#: ATen's channels-last batch norm kernels vectorize over channels in blocks
#: of 8 floats and fall back to scalar code for the rest: measured on
#: (32, 676, C) float32, C = 8, 16, 24 run 6-8x faster than C = 4, 10, 12, 20.
#: Channels-last batch norm with a channel count that is not a multiple of
#: this runs as a few composite ops instead (:class:`ChannelsLastBatchNorm`).
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


#: A centered copy that no backward will read (nothing records gradients) and
#: that is larger than glibc's largest heap allocation (32 MiB: a larger one
#: is mapped afresh and page-faulted on every call, 26 ms per 100 MB here) is
#: written into a buffer kept per thread for the next call, up to this size.
SCRATCH_BYTES = (32 << 20, 512 << 20)

_scratch = threading.local()


def subtract(x, shift, *, transient=False):
    """``x - shift`` (broadcast) in the compute dtype: one pass, also the
    upcast of float16/bfloat16. ``transient``: the result is read only
    before the next call in this thread (see :data:`SCRATCH_BYTES`)."""
    dtype = torch.promote_types(x.dtype, shift.dtype)
    low, high = SCRATCH_BYTES
    if not transient or not low < x.numel() * dtype.itemsize <= high:
        return torch.sub(x, shift)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get((x.device, dtype))
    if buffer is None or buffer.numel() < x.numel():
        buffer = buffers[(x.device, dtype)] = torch.empty(x.numel(), dtype=dtype, device=x.device)
    return torch.sub(x, shift, out=buffer[: x.numel()].view(x.shape))


def center(x3, shift, channels_last, *, transient=False):
    """``x3 - shift`` for ``x3`` of shape ``(N, S, C)`` (``channels_last``)
    or ``(N, C, S)`` and ``shift`` of shape ``(N or 1, C)`` (see :func:`subtract`)."""
    n, c = shift.shape
    return subtract(x3, shift.view(n, 1, c) if channels_last else shift.view(n, c, 1), transient=transient)


def kernel_view(xc3, channels_last):
    """``(N, C, S, 1)``: a ``channels_last`` view of ``(N, S, C)``, a plain
    one of ``(N, C, S)``."""
    if channels_last:
        n, s, c = xc3.shape
        return xc3.view(n, s, 1, c).permute(0, 3, 1, 2)
    return xc3.unsqueeze(3)


class ChannelsLastGroupNorm(torch.autograd.Function):
    """Group norm of channels-last data ``x3 = (N, S, C)`` about a per-sample
    and channel ``shift`` (``(N, C)``, no gradient): ``native_group_norm``
    on the centered data, whose backward always asks ATen for dX (its
    channels-last backward kernel crashes, segfault, torch 2.13 CPU, when
    only the parameters' gradients are requested, as in a model's first
    layer). With one channel per group (instance norm) the forward of small
    samples and the backward run one batch norm per sample instead (faster),
    each centering its sample itself: the centered sample is in cache, and
    no centered copy of the whole input is made or kept."""

    @staticmethod
    def forward(ctx, x3, shift, gamma, beta, groups, epsilon, transient):
        n, s, c = x3.shape
        if _per_sample(n, c, groups) and s < MAX_SAMPLE_LOOP_POSITIONS:
            y3, mean, rstd = _instance_norm_forward(x3, shift, gamma, beta, epsilon)
            saved = x3  # each sample is centered again in the backward
        else:
            xc = kernel_view(center(x3, shift, True, transient=transient), True)
            y4, mean, rstd = torch.native_group_norm(xc, gamma, beta, n, c, s, groups, epsilon)
            y3 = y4.permute(0, 2, 3, 1).reshape(n, s, c)  # free: y4 is channels_last
            saved = xc.permute(0, 2, 3, 1).reshape(n, s, c)
        ctx.save_for_backward(saved, shift, gamma, mean, rstd)
        ctx.centered = saved is not x3
        ctx.groups, ctx.epsilon, ctx.has_beta, ctx.dtype = groups, epsilon, beta is not None, x3.dtype
        ctx.mark_non_differentiable(mean, rstd)
        return y3, mean, rstd

    @staticmethod
    def backward(ctx, dy3, _dmean, _drstd):
        x3, shift, gamma, mean, rstd = ctx.saved_tensors
        n, s, c = x3.shape
        groups = ctx.groups
        need_x, need_gamma, need_beta = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        mask = [True, gamma is not None and need_gamma, ctx.has_beta and need_beta]
        dy3 = dy3.contiguous()
        if _per_sample(n, c, groups):
            dx, dgamma, dbeta = _instance_norm_backward(dy3, x3, None if ctx.centered else shift, mean, rstd,
                                                        gamma, mask, ctx.epsilon)
        else:
            x4 = kernel_view(x3 if ctx.centered else center(x3, shift, True), True)
            dx4, dgamma, dbeta = torch.ops.aten.native_group_norm_backward(
                kernel_view(dy3, True), x4, mean, rstd, gamma, n, c, s, groups, mask
            )
            dx = dx4.permute(0, 2, 3, 1).reshape(n, s, c)
        dx = (dx if dx.dtype == ctx.dtype else dx.to(ctx.dtype)) if need_x else None
        return dx, None, dgamma, dbeta, None, None, None


def _per_sample(n, c, groups):
    """Whether channels-last instance norm runs as a batch norm per sample
    (ATen's channels-last batch-norm kernels vectorize over channels in
    blocks of :data:`CHANNEL_BLOCK`). Eager only: ``n`` is an int."""
    return groups == c and c % CHANNEL_BLOCK == 0 and n <= MAX_SAMPLE_LOOP


def _instance_norm_forward(x3, shift, gamma, beta, epsilon):
    """Channels-last instance norm as one ATen batch norm per sample (see
    :data:`MAX_SAMPLE_LOOP_POSITIONS`), each on its sample minus its shift,
    written into one output; returns ``(y3, mean, rstd)`` (``mean`` of the
    centered data), as ``native_group_norm`` does."""
    n, s, c = x3.shape
    y3 = x3.new_empty((n, s, c), dtype=shift.dtype)
    mean, rstd = shift.new_empty(n, c), shift.new_empty(n, c)
    for i in range(n):
        torch.ops.aten.native_batch_norm.out(
            torch.sub(x3[i], shift[i]), gamma, beta, None, None, True, 0.0, epsilon,
            out=y3[i], save_mean=mean[i], save_invstd=rstd[i],
        )
    return y3, mean, rstd


def _instance_norm_backward(dy3, x3, shift, mean, rstd, gamma, mask, epsilon):
    """Channels-last instance norm's backward as one batch-norm backward per sample.

    Instance norm of one sample is batch norm of its ``(S, C)`` slice, and
    ATen's channels-last batch-norm backward (vectorized over channels) is
    3-4x faster than its channels-last group-norm backward with one channel
    per group; it takes the forward's saved mean and rstd, and centers ``x``
    by that mean itself. ``x3`` is centered already, or is centered here by
    ``shift`` one sample at a time. The per-sample input gradients are
    written into one tensor; the parameter gradients summed.
    """
    n, s, c = x3.shape
    dx3 = dy3.new_empty((n, s, c), dtype=mean.dtype)
    dgamma = dbeta = None
    for i in range(n):
        xi = x3[i] if shift is None else torch.sub(x3[i], shift[i])
        dx, dg, db = torch.ops.aten.native_batch_norm_backward(
            dy3[i], xi, gamma, None, None, mean[i], rstd[i], True, epsilon, mask
        )
        dx3[i] = dx
        if mask[1]:
            dgamma = dg if dgamma is None else dgamma + dg
        if mask[2]:
            dbeta = db if dbeta is None else dbeta + db
    return dx3, dgamma, dbeta


class ChannelsLastBatchNorm(torch.autograd.Function):
    """Batch norm of a ``(M, C)`` matrix's columns (channels-last data with a
    channel count that is not a multiple of :data:`CHANNEL_BLOCK`, where
    ATen's kernels are scalar) from plain moments, with a closed-form
    backward: ``E[x]`` and ``E[x^2]`` (one reduction each),
    ``y = x * scale + (beta - mean * scale)`` in one pass, and
    ``dx = scale * (dy - mean(dy)) - scale * rstd^2 * mean(dy * xc) * xc``
    from two reductions. Exact on centered data (offset ratio at most
    ``MAX_SHIFT_RATIO``, as the caller ensures). Also returns the batch mean
    and biased variance, whose cotangents (if any) flow into ``dx``."""

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
