"""The torch fast paths on normlab's compiled CPU kernels
(:mod:`normlab.backends.cpu`): float32, bfloat16 and float16 CPU tensors
(statistics, parameters and their gradients in float32), group and instance
norm (channels-last and channels-first), batch norm (both layouts) and
layer and RMS norm over trailing axes, forward and backward in two reads of the
data each, with the hook's shift folded into the reads (no centered copy;
see :mod:`normlab.backends.policy`).

Channels-last group, instance and batch norm run as :class:`Slices`
(``(N, S, C)``, batch norm as one sample of all positions); layer norm,
RMS norm (uncentered),
group norm of ``(N, C)`` data and channels-first group and instance norm
as :class:`Rows`; channels-first batch norm as :class:`Planes`
(:mod:`normlab.backends.cpu.layout`, which also splits a call into tasks).
The hooks ask :func:`served` first: where the kernels are unavailable (no
compiler, ``NORMLAB_CPU_KERNELS=0``) or the input is not theirs (float64,
another device) they use ATen's kernels on centered data
(:mod:`normlab.backends.torch_autograd`). Eager only, as every torch hook:
sizes here are ints. Every tensor whose address a kernel takes is held in
a local variable for the call (an address alone keeps no tensor alive).
"""

from __future__ import annotations

import torch

from normlab.backends import cpu
from normlab.backends.cpu.layout import Channels, Planes, Rows, Slices
from normlab.backends.policy import subsample_size
from normlab.backends.torch_autograd import (
    _composite_vjp,
    _grad_mask,
    _input_grad,
    differentiated,
    group_norm_composite,
)
from normlab.backends.torch_saved_tensors import save_tensors, saved_tensors

#: Calls on fewer elements than this run on one thread. Measured on an
#: AMD EPYC (Zen 4, AVX-512) virtual machine with 2 cores (layer norm,
#: rows of 256, forward): one thread and two are
#: even at 2^13 elements (14 us), two ahead from 2^14 (16.0 vs 17.6 us)
#: and at 2^17 (32 vs 50 us).
MIN_PARALLEL = 1 << 14

#: The kernels' element types: torch dtype -> suffix of the entry points.
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def served(x) -> bool:
    """Whether the kernels take ``x``: float32, bfloat16 or float16 on the
    CPU, and built."""
    return x.dtype in SUFFIX and x.device.type == "cpu" and cpu.library() is not None


def _entry(name, x):
    return cpu.entry(name, SUFFIX[x.dtype])


def slices(x3, shift, gamma, beta, groups, epsilon):
    """``(y3, mean, variance)`` of ``x3`` ``(N, S, C)`` (``mean`` that of
    ``x3 - shift``, both ``(N, groups)``), for ``x3`` :func:`served`."""
    n, s, c = x3.shape
    return _kernel_norm(x3, shift.contiguous(), gamma, beta, Slices(n, s, c, groups), epsilon)


def rows(x2, shift, gamma, beta, epsilon, groups=1, positions=1, centered=True):
    """``(y2, mean, variance)`` of ``x2`` ``(R, W)`` per row (``mean`` that of
    ``x2 - shift``, both ``(R,)``), rows of channels of ``positions`` values
    whose parameters repeat every ``groups`` rows (see :class:`Rows`), for
    ``x2`` :func:`served`. ``shift`` None: the kernel takes the mean of each
    row's first :func:`~normlab.backends.policy.subsample_size` values (the
    rows' subsample shift, formed as each row is read; ``mean`` is then
    about that shift, which is not returned: the hooks use ``y2`` only). Not ``centered``
    (``shift`` None): RMS norm, the variance being the mean square and the
    mean 0."""
    r, w = x2.shape
    if not centered and (shift is not None or (groups, positions) != (1, 1)):
        # (the double backward's composite takes plain rows)
        raise ValueError(f"uncentered rows take groups=1, positions=1 and no shift, not {groups}, {positions} and "
                         f"{'a' if shift is not None else 'no'} shift")
    layout = Rows(r, w, groups, positions, int(centered))
    shift = None if shift is None else shift.reshape(r).contiguous()
    return _kernel_norm(x2, shift, gamma, beta, layout, epsilon)


def planes(x3, shift, gamma, beta, epsilon):
    """``(y3, mean, variance)`` of ``x3`` ``(N, C, S)`` per channel (``mean``
    that of ``x3 - shift``, both ``(C,)``), for ``x3`` :func:`served`."""
    n, c, s = x3.shape
    return _kernel_norm(x3, shift.reshape(c).contiguous(), gamma, beta, Planes(n, c, s), epsilon)


def affine(x3, mean, variance, gamma, beta, epsilon):
    """``y3 = (x3 - mean) * rsqrt(variance + epsilon) * gamma + beta`` of
    ``x3`` ``(O, C, I)`` per channel (see :class:`Channels`), for ``x3``
    :func:`served`; ``mean`` and ``variance`` are float32 ``(C,)`` constants."""
    o, c, i = x3.shape
    if _records(x3, gamma, beta):
        return AffineNorm.apply(x3, mean, gamma, beta, variance, Channels(o, c, i), epsilon)
    return _affine_forward(x3, mean, gamma, beta, variance, Channels(o, c, i), epsilon)


def _records(*tensors):
    """Whether autograd records a call on ``tensors``: where it does not
    (``no_grad``, inference, no input that requires a gradient) the hooks
    call the kernels without the ``autograd.Function`` (about 10 us of a
    small call: layer norm of (8, 64), 23 vs 13 us)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _kernel_norm(x, shift, gamma, beta, layout, epsilon):
    """:class:`KernelNorm`'s ``(y, mean, variance)``, through autograd where it records."""
    if _records(x, gamma, beta):
        return KernelNorm.apply(x, shift, gamma, beta, layout, epsilon)
    return _forward(x, shift, gamma, beta, layout, epsilon)[:3]


def _ptr(t):  # an address for a c_void_p argument (None: NULL)
    return None if t is None else t.data_ptr()


def _contiguous(p):  # (a parameter's memory as a kernel reads it; None: NULL)
    return p if p is None or p.is_contiguous() else p.contiguous()


def _threads(numel):
    return 1 if numel < MIN_PARALLEL else max(1, torch.get_num_threads())


def _work_space(x, layout, chunks, threads, *more):
    """The addresses of ``part`` (float64), ``scratch`` and ``coef`` (float32)
    of a :class:`Slices` call, per thread when each sample is one task
    (``chunks == 1``), else per task and sample, then of ``more`` (see
    :func:`_scratch`); and the buffer that holds them."""
    n, _, c, _ = layout
    slots, coefs = (threads, threads) if chunks == 1 else (n * chunks, n)
    return _scratch(x, (slots * 2 * c, 8), (slots * 2 * c, 4), (coefs * 4 * c, 4), *more)


def _scratch(x, *pieces):
    """One buffer for a call's working memory, ``pieces`` ``(count, itemsize)``
    (an allocation costs about 1 us): each piece's address (64-byte
    aligned, as torch's own allocations), then the buffer (kept by the
    caller until the kernel returns)."""
    sizes = [-(-count * itemsize // 64) * 64 for count, itemsize in pieces]
    buffer = x.new_empty(sum(sizes), dtype=torch.uint8)
    address, addresses = buffer.data_ptr(), []
    for size in sizes:
        addresses.append(address)
        address += size
    return (*addresses, buffer)


def _f32(x, size):
    return x.new_empty(size, dtype=torch.float32)


def _forward(x, shift, gamma, beta, layout, epsilon):
    """``(y, mean, var, rstd, shift)``: ``shift`` the one given, or the one the
    rows kernel formed where none was (centered :class:`Rows`)."""
    y, threads = torch.empty_like(x), _threads(x.numel())
    mean, var, rstd = (_f32(x, layout.stats) for _ in range(3))
    gamma, beta = _contiguous(gamma), _contiguous(beta)
    args = [_ptr(t) for t in (x, shift, gamma, beta, y, mean, var, rstd)]
    if isinstance(layout, Slices):
        n, s, c, g = layout
        chunks = layout.chunks()
        *work, buffer = _work_space(x, layout, chunks, threads)
        _entry("nl_slices_forward", x)(*args, n, s, c, g, chunks, epsilon, *work, threads)
        return y, mean.view(n, g), var.view(n, g), rstd.view(n, g), shift
    if isinstance(layout, Planes):
        _entry("nl_planes_forward", x)(*args, *layout, layout.tasks(), epsilon, threads)
        return y, mean, var, rstd, shift
    head = 0
    if shift is None and layout.centered:
        shift, head = _f32(x, layout.r), subsample_size(layout.w)
        args[1] = _ptr(shift)
    _entry("nl_rows_forward", x)(*args, *layout, head, layout.tasks(), epsilon, threads)
    return y, mean, var, rstd, shift


def _backward(dy, x, shift, mean, rstd, gamma, layout, mask):
    dy, threads = dy.to(x.dtype).contiguous(), _threads(x.numel())
    dx = torch.empty_like(x) if mask[0] else None
    width = layout.channels if isinstance(layout, Rows) else layout.c
    dgamma = _f32(x, width) if mask[1] else None
    dbeta = _f32(x, width) if mask[2] else None
    gamma = _contiguous(gamma)
    args = [_ptr(t) for t in (dy, x, shift, mean, rstd, gamma, dx, dgamma, dbeta)]
    if isinstance(layout, Slices):
        n, s, c, g = layout
        chunks = layout.chunks()
        *work, buffer = _work_space(x, layout, chunks, threads, (n * 2 * c, 8))  # then acc
        _entry("nl_slices_backward", x)(*args, n, s, c, g, chunks, *work, threads)
    elif isinstance(layout, Planes):
        _entry("nl_planes_backward", x)(*args, *layout, layout.tasks(), threads)
    else:
        chunks = layout.grad_tasks()
        part, scratch, buffer = _scratch(x, (chunks * 2 * width, 8), (chunks * 2 * width, 4))
        _entry("nl_rows_backward", x)(*args, *layout, chunks, part, scratch, threads)
    return dx, dgamma, dbeta


def _composite(x, shift, gamma, beta, layout, epsilon):
    """The same normalization in plain differentiable ops (double backward)."""
    if isinstance(layout, Slices):
        xc3, groups = x - shift.view(layout.n, 1, layout.c), layout.g
        channels_last = True
    elif isinstance(layout, Planes):  # one sample of all positions, channels-last: (1, n * s, c)
        n, c, s = layout
        xc3 = (x - shift.view(1, c, 1)).transpose(1, 2).reshape(1, n * s, c)
        flat = (None if p is None else p.reshape(-1) for p in (gamma, beta))
        y = group_norm_composite(xc3, True, c, *flat, epsilon)
        return y.view(n, s, c).transpose(1, 2).reshape(x.shape)
    elif not layout.centered:  # RMS norm of rows, in float32
        xf = x.float()
        y = xf * torch.rsqrt((xf * xf).mean(1, keepdim=True) + epsilon)
        y = y if gamma is None else y * gamma.reshape(-1)
        return y if beta is None else y + beta.reshape(-1)
    else:  # a sample's rows side by side, channels-first: (r // g, channels, p)
        r, _, groups, positions, _ = layout
        xc3 = (x - shift.view(r, 1)).reshape(r // groups, layout.channels, positions)
        channels_last = False
    flat = (None if p is None else p.reshape(-1) for p in (gamma, beta))
    return group_norm_composite(xc3, channels_last, groups, *flat, epsilon).view(x.shape)


class KernelNorm(torch.autograd.Function):
    """Normalization by the compiled kernels: ``(y, mean, variance)``, the
    statistics (of ``x - shift``, no gradient) as outputs. ``shift`` is a
    constant; ``layout`` a :class:`Slices`, :class:`Rows` or :class:`Planes`. Double backward
    differentiates the same normalization in plain ops."""

    @staticmethod
    def forward(ctx, x, shift, gamma, beta, layout, epsilon):
        y, mean, var, rstd, shift = _forward(x, shift, gamma, beta, layout, epsilon)
        save_tensors(ctx, x, shift, gamma, beta, mean, rstd)
        ctx.layout, ctx.epsilon, ctx.dtype = layout, epsilon, x.dtype
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, shift, gamma, beta, mean, rstd = saved_tensors(ctx)
        layout, epsilon = ctx.layout, ctx.epsilon
        if differentiated(dy):
            def composite(x, g, b):  # in float32, rounded to x's dtype as the kernels' output
                return _composite(x, shift, g, b, layout, epsilon).to(x.dtype)

            return (*_composite_vjp(ctx, dy, composite, x, gamma, beta), None, None)
        mask = [ctx.needs_input_grad[0], *_grad_mask(ctx, gamma, beta)[1:]]
        dx, dgamma, dbeta = _backward(dy, x, shift, mean, rstd, gamma, layout, mask)
        dgamma = None if dgamma is None else dgamma.view(gamma.shape)
        dbeta = None if dbeta is None else dbeta.view(beta.shape)
        return _input_grad(ctx, dx), None, dgamma, dbeta, None, None


def _affine_composite(x, mean, variance, gamma, beta, layout, epsilon):
    """:func:`affine` in plain differentiable ops, in float32 (double backward)."""
    c = layout.c
    scale = torch.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma.reshape(c)
    y = (x - mean.view(1, c, 1)) * scale.view(1, c, 1)
    return y if beta is None else y + beta.reshape(c).view(1, c, 1)


def _affine_forward(x, mean, gamma, beta, variance, layout, epsilon):
    y, coef, threads = torch.empty_like(x), _f32(x, 2 * layout.c), _threads(x.numel())
    g, b = _contiguous(gamma), _contiguous(beta)
    args = [_ptr(t) for t in (x, mean, variance, g, b, y)]
    _entry("nl_affine_forward", x)(*args, *layout, layout.tasks(), epsilon, _ptr(coef), threads)
    return y


class AffineNorm(torch.autograd.Function):
    """Batch norm with given statistics by the compiled kernels. Inputs
    ``(x, mean, gamma, beta, variance, layout, epsilon)``: the statistics
    are constants (the hook declines those that need a gradient), and the
    parameters are where :func:`_composite_vjp` expects them. Double
    backward differentiates the same normalization in plain ops."""

    @staticmethod
    def forward(ctx, x, mean, gamma, beta, variance, layout, epsilon):
        y = _affine_forward(x, mean, gamma, beta, variance, layout, epsilon)
        save_tensors(ctx, x, mean, gamma, beta, variance)
        ctx.layout, ctx.epsilon, ctx.dtype = layout, epsilon, x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, gamma, beta, variance = saved_tensors(ctx)
        layout, epsilon = ctx.layout, ctx.epsilon
        if differentiated(dy):
            def composite(x, g, b):  # in float32, rounded to x's dtype as the kernel's output
                return _affine_composite(x, mean, variance, g, b, layout, epsilon).to(x.dtype)

            return (*_composite_vjp(ctx, dy, composite, x, gamma, beta), None, None, None)
        c, threads = layout.c, _threads(x.numel())
        dy = dy.to(x.dtype).contiguous()
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        _, want_gamma, want_beta = _grad_mask(ctx, gamma, beta)
        tasks = layout.grad_tasks() if want_gamma or want_beta else layout.tasks()
        dgamma = _f32(x, c) if want_gamma else None
        dbeta = _f32(x, c) if want_beta else None
        *work, buffer = _scratch(x, (2 * c, 4), (tasks * 2 * c, 8), (tasks * 2 * c, 4))  # coef, part, scratch
        g = _contiguous(gamma)
        args = [_ptr(t) for t in (dy, x, mean, variance, g, dx, dgamma, dbeta)]
        _entry("nl_affine_backward", x)(*args, *layout, tasks, epsilon, *work, threads)
        dgamma = None if dgamma is None else dgamma.view(gamma.shape)
        dbeta = None if dbeta is None else dbeta.view(beta.shape)
        return _input_grad(ctx, dx), None, dgamma, dbeta, None, None, None
