"""Layer norm and RMS norm over trailing axes on Triton: the launches, the
autograd function and the hooks (see
:mod:`normlab.backends.triton.row_kernels` for the kernels and their numerics).
"""

from __future__ import annotations

import math

import torch

import normlab.backends.triton.row_kernels as kernels
import normlab.backends.triton.runtime as runtime
from normlab.backends.torch_autograd import _composite_vjp, differentiated
from normlab.backends.torch_saved_tensors import save_tensors, saved_tensors

#: Widest row (elements over the normalized axes) a program holds in
#: registers; wider rows decline (the general path runs).
MAX_WIDTH = 16384

#: Elements a program holds: rows narrower than this share a program.
TILE = 4096

#: At most this many rows per program.
MAX_ROWS = 128


def _rows_per_program(width: int) -> int:
    return max(1, min(MAX_ROWS, TILE // runtime.next_power_of_2(width)))


def _meta(width: int, block_m: int) -> dict:
    block_w = runtime.next_power_of_2(width)
    return dict(BLOCK_M=block_m, BLOCK_W=block_w, num_warps=runtime.num_warps(block_m * block_w))


@runtime.on_input_device
def forward(x2, gamma, beta, epsilon: float, center: bool):
    """``(y2, mean, rstd)`` per row, float32 (``mean`` of ``x - s``, empty for RMS norm)."""
    m, w = x2.shape
    y2 = torch.empty_like(x2)
    mean = torch.empty((m if center else 0,), dtype=torch.float32, device=x2.device)
    rstd = torch.empty((m,), dtype=torch.float32, device=x2.device)
    block_m = _rows_per_program(w)
    flags = dict(CENTER=center, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None)
    kernels.forward[(-(-m // block_m),)](
        x2, y2, x2 if gamma is None else gamma, x2 if beta is None else beta, mean if center else rstd,
        rstd, m, w, epsilon, **_meta(w, block_m), **flags,
    )
    return y2, mean, rstd


@runtime.on_input_device
def backward(dy2, x2, gamma, mean, rstd, center: bool, need_dx: bool):
    """``(dx2 or None, partial dgamma, partial dbeta)``: the partials are
    ``(P, W)`` float32, one row per program, to be summed over ``P``."""
    m, w = x2.shape
    block_m = _rows_per_program(w)
    tiles = -(-m // block_m)
    programs = runtime.persistent_programs(x2, tiles)
    per_program = -(-tiles // programs)
    programs = -(-tiles // per_program)  # no program without a tile
    part_gamma = torch.empty((programs, w), dtype=torch.float32, device=x2.device)
    part_beta = torch.empty_like(part_gamma)
    dx2 = torch.empty_like(x2) if need_dx else None
    kernels.backward[(programs,)](
        x2, dy2, x2 if dx2 is None else dx2, x2 if gamma is None else gamma, mean if center else rstd,
        rstd, part_gamma, part_beta, m, w, tiles, per_program, **_meta(w, block_m),
        CENTER=center, HAS_GAMMA=gamma is not None, STORE_DX=need_dx,
    )
    return dx2, part_gamma, part_beta


def composite(x2, gamma, beta, epsilon: float, center: bool):
    """The same row norm in plain differentiable ops (for double backward):
    in float32, layer norm about each row's first value (no gradient flows
    through it) with two passes, rounded to ``x2``'s dtype as the kernels' output."""
    d = x2.float()
    if center:
        d = d - d[:, :1].detach()
        d = d - d.mean(1, keepdim=True)
    y = d * torch.rsqrt((d * d).mean(1, keepdim=True) + epsilon)
    y = y if gamma is None else y * gamma
    return (y if beta is None else y + beta).to(x2.dtype)


class RowNorm(torch.autograd.Function):
    """Layer norm (``center``) or RMS norm of the rows of ``x2 = (M, W)``;
    saves ``x2`` and ``4-8 M`` bytes of statistics. Double backward
    (``create_graph``) differentiates :func:`composite` instead of running the kernels."""

    @staticmethod
    def forward(ctx, x2, gamma, beta, epsilon, center):
        y2, mean, rstd = forward(x2, gamma, beta, epsilon, center)
        save_tensors(ctx, x2, gamma, beta, mean, rstd)
        ctx.epsilon, ctx.center = epsilon, center
        return y2

    @staticmethod
    def backward(ctx, dy2):
        x2, gamma, beta, mean, rstd = saved_tensors(ctx)
        if differentiated(dy2):
            def differentiable(x, g, b):
                return composite(x, g, b, ctx.epsilon, ctx.center)

            return (*_composite_vjp(ctx, dy2, differentiable, x2, gamma, beta, (0, 1, 2)), None, None)
        need_dx, need_gamma, need_beta = ctx.needs_input_grad[:3]
        dx2, part_gamma, part_beta = backward(dy2.contiguous(), x2, gamma, mean, rstd, ctx.center, need_dx)
        dgamma = part_gamma.sum(0).to(gamma.dtype) if need_gamma else None
        dbeta = part_beta.sum(0).to(beta.dtype) if need_beta else None
        return dx2, dgamma, dbeta, None, None


def _row_norm(x, axes, gamma, beta, epsilon, center):
    if not runtime.serves(x, kernels.forward):
        return None
    k = len(axes)
    if k == 0 or list(axes) != list(range(x.ndim - k, x.ndim)):
        return None  # only trailing axes are rows
    shape = tuple(x.shape[x.ndim - k:])
    width = math.prod(shape)
    gamma, beta = runtime.param(gamma, x, shape), runtime.param(beta, x, shape)
    if width > MAX_WIDTH or gamma is False or beta is False:
        return None
    y2 = RowNorm.apply(x.view(-1, width), gamma, beta, float(epsilon), center)
    return y2.view(x.shape)


def layer_norm(x, *, axes, gamma, beta, epsilon):
    """The hook (:mod:`normlab.backends`): layer norm of a CUDA tensor over
    its trailing ``axes`` on the Triton kernels, or None (declined).

    Example (a CPU tensor: declined, the general path runs):
        >>> import torch
        >>> from normlab.backends.triton.row_norm import layer_norm
        >>> layer_norm(torch.ones(4, 8), axes=[1], gamma=None, beta=None, epsilon=1e-3) is None
        True
    """
    return _row_norm(x, axes, gamma, beta, epsilon, True)


def rms_norm(x, *, axes, gamma, beta, epsilon):
    """RMS norm over trailing ``axes`` on the Triton kernels, or None: the
    kernel for a ``rms_norm`` hook (same contract as :func:`layer_norm`:
    ``y = x * rsqrt(mean(x^2) + epsilon) * gamma + beta``)."""
    return _row_norm(x, axes, gamma, beta, epsilon, False)
