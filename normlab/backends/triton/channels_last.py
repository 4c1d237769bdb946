"""Channels-last group and instance norm on Triton: the block plan, the
launches, the autograd function and the hook.

The hook serves ``(N, *spatial, C)`` data normalized over groups of the last
axis (instance norm is ``groups == C``); any other channel axis declines
(ATen serves channels-first data well). See
:mod:`normlab.backends.triton.group_kernels` for the kernels and their
numerics.
"""

from __future__ import annotations

import dataclasses

import torch

import normlab.backends.triton.group_kernels as kernels
import normlab.backends.triton.runtime as runtime
from normlab.backends.torch_autograd import _composite_vjp, differentiated, group_norm_composite
from normlab.backends.torch_saved_tensors import save_tensors, saved_tensors

#: Largest slab ``next_pow2(S) * BLOCK_C`` a program holds in registers
#: (resident strategy); larger ones run chunked.
MAX_RESIDENT = 16384

#: Elements of one tile of the chunked strategy (``BLOCK_S * BLOCK_C``).
TILE = 4096

#: Channel lanes a program aims for: 64 channels are 128-256 bytes a row.
LANES = 64

#: A row of a program's channels is at least this many bytes (a memory
#: sector) where the channel count allows: narrower slabs waste bandwidth.
MIN_ROW_BYTES = 32

#: Tiles per chunk, and at most this many chunks per sample (every apply
#: program merges all of its sample's chunk partials).
TILES_PER_CHUNK = 4
MAX_CHUNKS = 64

#: Channels per group beyond which the hook declines (a group must fit in
#: one program's lanes).
MAX_GROUP_CHANNELS = 4096


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the kernels cover ``(N, S, C)``: ``cb`` channels (whole groups of
    ``cg``) per program on ``block_c`` lanes; ``chunk`` rows per program
    (None: resident, the whole ``S`` in one tile of ``block_s`` rows)."""

    cg: int
    cb: int
    block_c: int
    block_s: int
    chunk: int | None
    num_warps: int

    @property
    def one_group(self) -> bool:
        return self.cb == self.cg

    def grid(self, n: int, s: int, c: int) -> tuple[int, ...]:
        blocks = -(-c // self.cb)
        return (n, blocks) if self.chunk is None else (n, self.chunks(s), blocks)

    def chunks(self, s: int) -> int:
        return 1 if self.chunk is None else -(-s // self.chunk)


def _block(cg: int, groups: int, lanes: int) -> tuple[int, int]:
    """``(cb, block_c)``: as many whole groups as fit in ``lanes`` (at least one)."""
    cb = cg * max(1, min(groups, lanes // cg))
    return cb, runtime.next_power_of_2(cb)


def plan(s: int, c: int, groups: int, itemsize: int, *, resident: bool | None = None) -> Plan | None:
    """The plan for ``(N, S, C)`` data of ``itemsize`` bytes: resident if some
    block of at least :data:`MIN_ROW_BYTES` a row fits :data:`MAX_RESIDENT`
    (``resident`` forces the choice, for tests and the benchmark), else
    chunked. None (decline) for groups wider than :data:`MAX_GROUP_CHANNELS`."""
    cg = c // groups
    if cg > MAX_GROUP_CHANNELS:
        return None
    rows = runtime.next_power_of_2(s)
    lanes = LANES
    while resident is not False:
        cb, block_c = _block(cg, groups, lanes)
        if rows * block_c <= MAX_RESIDENT or resident:
            return Plan(cg, cb, block_c, rows, None, runtime.num_warps(rows * block_c))
        if lanes * itemsize <= MIN_ROW_BYTES or cb == cg:
            break
        lanes //= 2
    cb, block_c = _block(cg, groups, LANES)
    block_s = max(1, min(rows, TILE // block_c))
    chunk = max(block_s * TILES_PER_CHUNK, -(-s // MAX_CHUNKS))
    chunk = -(-chunk // block_s) * block_s
    return Plan(cg, cb, block_c, block_s, chunk, runtime.num_warps(block_s * block_c))


def _meta(p: Plan) -> dict:
    return dict(CG=p.cg, CB=p.cb, BLOCK_S=p.block_s, BLOCK_C=p.block_c, num_warps=p.num_warps)


@runtime.on_input_device
def forward(x3, gamma, beta, groups: int, epsilon: float, p: Plan):
    """``(y3, mean, rstd)``: ``mean`` of ``x - shift`` and ``rstd`` per ``(N, G)``, float32."""
    n, s, c = x3.shape
    y3 = torch.empty_like(x3)
    mean = torch.empty((n, groups), dtype=torch.float32, device=x3.device)
    rstd = torch.empty_like(mean)
    flags = dict(ONE_GROUP=p.one_group, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None)
    gamma = x3 if gamma is None else gamma  # an unread placeholder pointer
    beta = x3 if beta is None else beta
    grid = p.grid(n, s, c)
    if p.chunk is None:
        kernels.forward_resident[grid](x3, y3, gamma, beta, mean, rstd, s, c, groups, epsilon, **_meta(p), **flags)
        return y3, mean, rstd
    chunks = p.chunks(s)
    part_mean = torch.empty((n, chunks, c), dtype=torch.float32, device=x3.device)
    part_m2 = torch.empty_like(part_mean)
    kernels.partial_stats[grid](x3, part_mean, part_m2, s, c, p.chunk, chunks, **_meta(p))
    kernels.apply_chunk[grid](x3, y3, gamma, beta, part_mean, part_m2, mean, rstd, s, c, groups, p.chunk, chunks,
                              epsilon, **_meta(p), **flags)
    return y3, mean, rstd


@runtime.on_input_device
def backward(dy3, x3, gamma, mean, rstd, groups: int, p: Plan, need_dx: bool):
    """``(dx3 or None, a, b)``: per sample, chunk and channel ``a = sum(dy)``
    and ``b = sum(dy * xhat)`` (float32; their sums over samples and chunks
    are ``dbeta`` and ``dgamma``)."""
    n, s, c = x3.shape
    chunks = p.chunks(s)
    part_a = torch.empty((n, chunks, c), dtype=torch.float32, device=x3.device)
    part_b = torch.empty_like(part_a)
    dx3 = torch.empty_like(x3) if need_dx else None
    has_gamma = gamma is not None
    gamma = x3 if gamma is None else gamma
    grid = p.grid(n, s, c)
    if p.chunk is None:
        kernels.backward_resident[grid](x3, dy3, x3 if dx3 is None else dx3, gamma, mean, rstd, part_a, part_b,
                                        s, c, groups, **_meta(p), ONE_GROUP=p.one_group, HAS_GAMMA=has_gamma,
                                        STORE_DX=need_dx)
        return dx3, part_a, part_b
    kernels.partial_grads[grid](x3, dy3, mean, rstd, part_a, part_b, s, c, groups, p.chunk, chunks, **_meta(p))
    if need_dx:
        kernels.grad_input_chunk[grid](x3, dy3, dx3, gamma, mean, rstd, part_a, part_b, s, c, groups, p.chunk,
                                       chunks, **_meta(p), ONE_GROUP=p.one_group, HAS_GAMMA=has_gamma)
    return dx3, part_a, part_b


def composite(x3, gamma, beta, groups: int, epsilon: float):
    """The same group norm in plain differentiable ops (for double backward):
    in float32 about each group's first value (no gradient flows through
    it), two passes, rounded to ``x3``'s dtype as the kernels' output."""
    cg = x3.shape[2] // groups
    shift = x3[:, :1, ::cg].detach().float().repeat_interleave(cg, dim=2)
    return group_norm_composite(x3.float() - shift, True, groups, gamma, beta, epsilon).to(x3.dtype)


class GroupNorm(torch.autograd.Function):
    """Channels-last group norm of ``x3 = (N, S, C)`` on the Triton kernels;
    saves ``x3`` and the per-group ``mean``/``rstd`` (``8 N G`` bytes).
    Double backward (``create_graph``, e.g. a gradient penalty)
    differentiates :func:`composite` instead of running the kernels."""

    @staticmethod
    def forward(ctx, x3, gamma, beta, groups, epsilon, p):
        y3, mean, rstd = forward(x3, gamma, beta, groups, epsilon, p)
        save_tensors(ctx, x3, gamma, beta, mean, rstd)
        ctx.groups, ctx.epsilon, ctx.plan = groups, epsilon, p
        return y3

    @staticmethod
    def backward(ctx, dy3):
        x3, gamma, beta, mean, rstd = saved_tensors(ctx)
        if differentiated(dy3):
            def differentiable(x, g, b):
                return composite(x, g, b, ctx.groups, ctx.epsilon)

            return (*_composite_vjp(ctx, dy3, differentiable, x3, gamma, beta, (0, 1, 2)), None, None, None)
        need_dx, need_gamma, need_beta = ctx.needs_input_grad[:3]
        dx3, part_a, part_b = backward(dy3.contiguous(), x3, gamma, mean, rstd, ctx.groups, ctx.plan, need_dx)
        c = x3.shape[2]
        dgamma = part_b.view(-1, c).sum(0).to(gamma.dtype) if need_gamma else None
        dbeta = part_a.view(-1, c).sum(0).to(beta.dtype) if need_beta else None
        return dx3, dgamma, dbeta, None, None, None


def group_norm(x, *, groups, axis, gamma, beta, epsilon, resident=None):
    """The hook (:mod:`normlab.backends`): channels-last group norm of a CUDA
    tensor on the Triton kernels, or None (declined). ``resident`` forces
    the block strategy (tests and the benchmark; None chooses by shape).

    Example (a CPU tensor: declined, the general path runs):
        >>> import torch
        >>> from normlab.backends.triton.channels_last import group_norm
        >>> group_norm(torch.ones(2, 4, 4, 8), groups=2, axis=3, gamma=None, beta=None, epsilon=1e-3) is None
        True
    """
    if not runtime.serves(x, kernels.forward_resident) or axis != x.ndim - 1:
        return None
    n, c = x.shape[0], x.shape[-1]
    if not 0 < groups <= c or c % groups:  # the kernels index groups of c // groups channels
        return None
    s = x.numel() // (n * c)
    p = plan(s, c, int(groups), x.element_size(), resident=resident)
    gamma, beta = runtime.param(gamma, x, (c,)), runtime.param(beta, x, (c,))
    if p is None or gamma is False or beta is False:
        return None
    return GroupNorm.apply(x.view(n, s, c), gamma, beta, int(groups), float(epsilon), p).view(x.shape)
