"""The torch fast paths' own autograd functions and layout helpers: ATen's
kernels fed data centered by the hook's shift (see :mod:`normlab.backends.torch`
for the numerics), the centered copy made in a reused buffer and again in
the backward rather than kept, and channels-last variants where ATen alone
is slow or crashes.

Eager only: the hooks decline while a compiler or exporter traces, so the
batch size here is always an int (the per-sample loops need one).
"""

from __future__ import annotations

import math

import torch

from normlab.backends.torch_saved_tensors import save_tensors, saved_tensors
from normlab.backends.torch_scratch import release_buffers, subtract  # noqa: F401 (release_buffers: public here)

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


# --------------------------------------------------------------------------
# ATen kernels on centered data. Each is the pair a ShiftedNorm runs:
# ``forward(xc, gamma, beta) -> (y, *saved)`` and ``backward(dy, xc, gamma,
# beta, saved, mask) -> (dx, dgamma, dbeta)``, with ``center(x, shift, transient)``.


class LayerNormKernel:
    """``native_layer_norm`` over the trailing ``shape`` of ``x``; ``shift`` is ``(rows, 1)``."""

    def __init__(self, shape, epsilon):
        self.shape, self.epsilon, self.width = shape, epsilon, math.prod(shape)

    def center(self, x, shift, transient):
        return subtract(x.view(-1, self.width), shift, transient=transient).view(x.shape)

    def forward(self, xc, gamma, beta):
        return torch.native_layer_norm(xc, self.shape, gamma, beta, self.epsilon)

    def backward(self, dy, xc, gamma, beta, saved, mask):
        mean, rstd = saved
        return torch.ops.aten.native_layer_norm_backward(dy, xc, self.shape, mean, rstd, gamma, beta, mask)


class GroupNormKernel:
    """``native_group_norm`` of contiguous ``(N, C, S)`` data; ``shift`` is ``(N, C)``."""

    def __init__(self, groups, epsilon):
        self.groups, self.epsilon = groups, epsilon

    def center(self, x3, shift, transient):
        return center(x3, shift, False, transient=transient)

    def forward(self, xc3, gamma, beta):
        n, c, s = xc3.shape
        y4, mean, rstd = torch.native_group_norm(xc3.unsqueeze(3), gamma, beta, n, c, s, self.groups, self.epsilon)
        return y4.squeeze(3), mean, rstd

    def composite(self, xc3, gamma, beta):
        return group_norm_composite(xc3, False, self.groups, gamma, beta, self.epsilon)

    def backward(self, dy, xc3, gamma, beta, saved, mask):
        n, c, s = xc3.shape
        mean, rstd = saved
        dx, dgamma, dbeta = group_norm_backward(
            dy.contiguous().unsqueeze(3), xc3.unsqueeze(3), mean, rstd, gamma, n, c, s, self.groups, mask
        )
        return dx.squeeze(3), dgamma, dbeta


def group_norm_backward(dy4, x4, mean, rstd, gamma, n, c, s, groups, mask):
    """ATen's group-norm backward of ``(N, C, S, 1)`` data; without ``gamma``,
    beta's gradient as a sum here (ATen's CPU kernel then fails: "tensor does
    not have a device"; torch 2.13)."""
    if gamma is not None or not mask[2]:
        return torch.ops.aten.native_group_norm_backward(dy4, x4, mean, rstd, gamma, n, c, s, groups, mask)
    dx, dgamma, _ = torch.ops.aten.native_group_norm_backward(
        dy4, x4, mean, rstd, gamma, n, c, s, groups, [mask[0], mask[1], False])
    return dx, dgamma, dy4.sum((0, 2, 3), dtype=torch.promote_types(dy4.dtype, torch.float32))


class BatchNormKernel:
    """``native_batch_norm`` in training of ``(N, S, C)`` (``channels_last``)
    or ``(N, C, S)`` data, viewed as ``(N, C, S, 1)``; ``shift`` is ``(1, C)``.
    Also returns the batch mean (of the centered data) and biased variance."""

    def __init__(self, channels_last, epsilon):
        self.channels_last, self.epsilon = channels_last, epsilon

    def center(self, x3, shift, transient):
        return center(x3, shift, self.channels_last, transient=transient)

    def forward(self, xc3, gamma, beta):
        x4 = kernel_view(xc3, self.channels_last)
        c = x4.shape[1]
        count = xc3.numel() // c
        # With momentum 1 the running buffers receive the batch statistics:
        # the mean, and the unbiased variance (rescaled to the biased one).
        mean, variance = xc3.new_zeros(c), xc3.new_ones(c)
        y4, save_mean, save_rstd = torch.native_batch_norm(x4, gamma, beta, mean, variance, True, 1.0, self.epsilon)
        variance = torch.clamp(variance * ((count - 1) / count), min=0.0)
        y = y4.permute(0, 2, 3, 1) if self.channels_last else y4.squeeze(3)
        return y.reshape(xc3.shape), mean, variance, save_mean, save_rstd

    def backward(self, dy, xc3, gamma, beta, saved, mask):
        save_mean, save_rstd = saved[2:]
        dy4 = kernel_view(dy.contiguous(), self.channels_last)
        dx4, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            dy4, kernel_view(xc3, self.channels_last), gamma, None, None, save_mean, save_rstd, True,
            self.epsilon, mask,
        )
        dx = dx4.permute(0, 2, 3, 1) if self.channels_last else dx4.squeeze(3)
        return dx.reshape(xc3.shape), dgamma, dbeta


class ShiftedNorm(torch.autograd.Function):
    """``kernel(x - shift)`` (see the kernels above) with no centered copy
    kept: the forward centers ``x`` into the thread's buffer, and the
    backward centers it again (``shift`` is a constant: no gradient flows
    through it). The extra statistics a kernel returns after ``y`` are
    outputs too, without gradient. Double backward works: under
    ``create_graph`` the backward's centered copy is a fresh tensor."""

    @staticmethod
    def forward(ctx, x, shift, gamma, beta, kernel):
        y, *saved = kernel.forward(kernel.center(x, shift, True), gamma, beta)
        save_tensors(ctx, x, shift, gamma, beta, *saved)
        ctx.kernel, ctx.dtype = kernel, x.dtype
        ctx.mark_non_differentiable(*saved)
        return (_not_a_view(y), *saved)

    @staticmethod
    def backward(ctx, dy, *_dsaved):
        x, shift, gamma, beta, *saved = saved_tensors(ctx)
        kernel = ctx.kernel
        if differentiated(dy) and hasattr(kernel, "composite"):
            def composite(x, g, b):
                return kernel.composite(kernel.center(x, shift, False), g, b)

            return (*_composite_vjp(ctx, dy, composite, x, gamma, beta), None)
        mask = _grad_mask(ctx, gamma, beta)
        xc = ctx.kernel.center(x, shift, not torch.is_grad_enabled())
        dx, dgamma, dbeta = ctx.kernel.backward(dy, xc, gamma, beta, saved, mask)
        return _input_grad(ctx, dx), None, dgamma if mask[1] else None, dbeta if mask[2] else None, None


def _not_a_view(y):
    """``y`` with its memory, but not as a view: a view made inside a custom
    Function's forward (a kernel's squeeze or permute) may not be modified in
    place (``F.relu(y, inplace=True)`` after the norm raised), and no saved
    tensor shares ``y``'s memory."""
    return y.detach() if y._is_view() else y


def _grad_mask(ctx, gamma, beta):
    """ATen's ``output_mask`` for ``(dx, dgamma, dbeta)`` of a function whose
    inputs are ``(x, shift, gamma, beta, ...)``: dx always (ATen's
    channels-last backward crashes without it), the parameters where needed."""
    return [True, gamma is not None and ctx.needs_input_grad[2], beta is not None and ctx.needs_input_grad[3]]


def _input_grad(ctx, dx):
    """``dx`` in the input's dtype (``ctx.dtype``), or None where ``x`` needs no gradient."""
    if not ctx.needs_input_grad[0]:
        return None
    return dx if dx.dtype == ctx.dtype else dx.to(ctx.dtype)


def differentiated(dy) -> bool:
    """Whether a backward must differentiate its forward in plain ops instead of
    running its kernels (:func:`_composite_vjp`): in double backward (grad mode
    on; the kernels have no derivative), and for a batch of cotangents
    (``torch.autograd.grad(is_grads_batched=True)``, ``jacobian`` and ``hessian``
    with ``vectorize=True``), which reaches the backward as one legacy-vmap
    batched tensor, with no memory of its own for a kernel to read."""
    return torch.is_grad_enabled() or torch._C._functorch.is_legacy_batchedtensor(dy)


def _composite_vjp(ctx, dy, forward, x, gamma, beta, positions=(0, 2, 3)):
    """The gradients of ``ctx``'s inputs ``x``, ``gamma``, ``beta`` at ``positions``
    (None between: ``(dx, None, dgamma, dbeta)`` by default) where
    :func:`differentiated`: by differentiating ``forward(x, gamma, beta)``, plain
    ops, with ``create_graph`` in double backward (a gradient penalty)."""
    create_graph = torch.is_grad_enabled()
    inputs = {i: t for i, t in zip(positions, (x, gamma, beta)) if ctx.needs_input_grad[i]}
    with torch.enable_grad():
        y = forward(x, gamma, beta)
        grads = torch.autograd.grad(y, list(inputs.values()), dy, create_graph=create_graph)
    found = dict(zip(inputs, grads))
    return tuple(found.get(i) for i in range(max(positions) + 1))


def group_norm_composite(xc3, channels_last, groups, gamma, beta, epsilon):
    """Group norm of centered ``(N, S, C)`` (``channels_last``) or ``(N, C, S)``
    data in plain differentiable ops (two passes)."""
    n = xc3.shape[0]
    c = xc3.shape[2] if channels_last else xc3.shape[1]
    if channels_last:
        g, dims, param = xc3.reshape(n, -1, groups, c // groups), (1, 3), (c,)
    else:
        g, dims, param = xc3.reshape(n, groups, c // groups, -1), (2, 3), (c, 1)
    d = g - g.mean(dims, keepdim=True)
    y = (d * torch.rsqrt((d * d).mean(dims, keepdim=True) + epsilon)).reshape(xc3.shape)
    if gamma is not None:
        y = y * gamma.view(param)
    return y if beta is None else y + beta.view(param)


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
    def forward(ctx, x3, shift, gamma, beta, groups, epsilon):
        n, s, c = x3.shape
        if _per_sample(n, c, groups) and s < MAX_SAMPLE_LOOP_POSITIONS:
            y3, mean, rstd = _instance_norm_forward(x3, shift, gamma, beta, epsilon)
        else:
            xc = kernel_view(center(x3, shift, True, transient=True), True)
            y4, mean, rstd = torch.native_group_norm(xc, gamma, beta, n, c, s, groups, epsilon)
            y3 = y4.permute(0, 2, 3, 1).reshape(n, s, c)  # free: y4 is channels_last
        save_tensors(ctx, x3, shift, gamma, beta, mean, rstd)  # centered again in the backward
        ctx.groups, ctx.epsilon, ctx.dtype = groups, epsilon, x3.dtype
        ctx.mark_non_differentiable(mean, rstd)
        return _not_a_view(y3), mean, rstd

    @staticmethod
    def backward(ctx, dy3, _dmean, _drstd):
        x3, shift, gamma, beta, mean, rstd = saved_tensors(ctx)
        n, s, c = x3.shape
        groups = ctx.groups
        if differentiated(dy3):
            def composite(x, g, b):
                return group_norm_composite(center(x, shift, True), True, groups, g, b, ctx.epsilon)

            return (*_composite_vjp(ctx, dy3, composite, x3, gamma, beta), None, None)
        mask = _grad_mask(ctx, gamma, beta)
        dy3 = dy3.contiguous()
        if _per_sample(n, c, groups):
            dx, dgamma, dbeta = _instance_norm_backward(dy3, x3, shift, mean, rstd, gamma, mask, ctx.epsilon)
        else:
            x4 = kernel_view(center(x3, shift, True, transient=True), True)
            dy4 = kernel_view(dy3, True)
            dx4, dgamma, dbeta = group_norm_backward(dy4, x4, mean, rstd, gamma, n, c, s, groups, mask)
            dx = dx4.permute(0, 2, 3, 1).reshape(n, s, c)
        return _input_grad(ctx, dx), None, dgamma, dbeta, None, None


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
    by that mean itself. ``x3`` is centered here by ``shift`` one sample at
    a time. The per-sample input gradients are
    written into one tensor; the parameter gradients summed.
    """
    n, s, c = x3.shape
    dx3 = dy3.new_empty((n, s, c), dtype=mean.dtype)
    dgamma = dbeta = None
    for i in range(n):
        xi = torch.sub(x3[i], shift[i])
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
        mean, variance, rstd = _column_moments(x, epsilon)
        scale = rstd if gamma is None else rstd * gamma
        offset = -mean * scale if beta is None else beta - mean * scale
        y = torch.addcmul(offset, x, scale)
        save_tensors(ctx, x, gamma, mean, rstd)
        ctx.has_beta, ctx.epsilon = beta is not None, epsilon
        return y, mean, variance

    @staticmethod
    def backward(ctx, dy, dmean, dvariance):
        x, gamma, mean, rstd = saved_tensors(ctx)
        if torch.is_grad_enabled():  # double backward: the statistics as functions of x
            mean, _, rstd = _column_moments(x, ctx.epsilon)
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


def _column_moments(x, epsilon):
    """Mean, biased variance and ``1 / sqrt(variance + epsilon)`` of each
    column of centered data (one-pass: exact for offset ratios bounded by
    the hook's shift)."""
    dims = tuple(range(x.ndim - 1))
    mean = x.mean(dims)
    variance = torch.clamp((x * x).mean(dims) - mean * mean, min=0.0)
    return mean, variance, torch.rsqrt(variance + epsilon)
