"""Triton kernels for layer norm and RMS norm over a row: data ``(M, W)``,
contiguous, every row one slice (the trailing axes flattened).

A program holds a tile of ``BLOCK_M`` whole rows (``BLOCK_W =
next_pow2(W)`` lanes) in registers: one read of ``x``, one write of ``y``,
like the fused kernels of Apex, Liger and Triton's tutorial.

Exactness (layer norm): each row is taken about its first element ``s``
(an input value: ``x - s`` is exact wherever the data sits at an offset
large against its spread), then two passes in registers: ``mean`` of
``d = x - s``, and the variance as the mean of ``(d - mean)^2``. The apply
step is ``(d - mean) * rstd``, so the row's mean is never rounded to the
scale of the offset. RMS norm has no cancellation to guard against: its
statistic is ``mean(x^2)``.

Backward: with ``xhat`` the normalized row and ``g = dy * gamma``,
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (RMS norm: without
``mean(g)``). A fixed number of persistent programs each take every
``P``-th tile of rows and accumulate ``sum(dy * xhat)`` and ``sum(dy)`` over
their rows; each writes its own row of a ``(P, W)`` float32 workspace,
which the caller sums: no atomics, the same bits on every run. ``gamma``
is loaded again for every tile (from cache) rather than held across the
loop beside the two accumulators: compiled for sm_90, rows of 16384
float32 values with ``gamma`` spilled 1.7 KB a thread when it was held,
0.46 KB now (``tests/backends/_triton_aot.py``).
"""

from __future__ import annotations

from normlab.backends.triton.primitives import jit, total
from normlab.backends.triton.runtime import triton

if triton is not None:
    import triton.language as tl


@jit
def _tile(pid, M, W, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < M) & (cols[None, :] < W)
    return rows, cols, mask, rows[:, None] * W + cols[None, :]


@jit
def _vector(ptr, cols, W, HAS: tl.constexpr, default: tl.constexpr, BLOCK_W: tl.constexpr):
    """A parameter row in float32 (``default`` everywhere without one)."""
    if HAS:
        v = tl.load(ptr + cols, mask=cols < W, other=0.0).to(tl.float32)
    else:
        v = tl.full([BLOCK_W], default, tl.float32)
    return v


@jit
def forward(x_ptr, y_ptr, gamma_ptr, beta_ptr, mean_ptr, rstd_ptr, M, W, eps,
            BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, CENTER: tl.constexpr,
            HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr):
    """Grid ``(cdiv(M, BLOCK_M),)``: normalize ``BLOCK_M`` rows; store each
    row's mean (of ``x - s``; layer norm only) and rstd."""
    rows, cols, mask, offs = _tile(tl.program_id(0), M, W, BLOCK_M, BLOCK_W)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if CENTER:
        shift = tl.load(x_ptr + rows * W, mask=rows < M, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[:, None], 0.0)
        mean = total(d, axis=1) / W
        r = tl.where(mask, d - mean[:, None], 0.0)
        tl.store(mean_ptr + rows, mean, mask=rows < M)
    else:
        r = x
    rstd = tl.rsqrt(total(r * r, axis=1) / W + eps)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)
    gamma = _vector(gamma_ptr, cols, W, HAS_GAMMA, 1.0, BLOCK_W)
    beta = _vector(beta_ptr, cols, W, HAS_BETA, 0.0, BLOCK_W)
    y = r * rstd[:, None] * gamma[None, :] + beta[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def backward(x_ptr, dy_ptr, dx_ptr, gamma_ptr, mean_ptr, rstd_ptr, part_gamma_ptr, part_beta_ptr, M, W, TILES,
             TILES_PER_PROGRAM, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, CENTER: tl.constexpr,
             HAS_GAMMA: tl.constexpr, STORE_DX: tl.constexpr):
    """Grid ``(P,)``: program ``p`` takes the ``TILES_PER_PROGRAM`` tiles of rows
    from ``p * TILES_PER_PROGRAM`` on, writes their ``dx`` and its partial
    ``sum(dy * xhat)``, ``sum(dy)`` per column."""
    pid = tl.program_id(0)
    first = pid * TILES_PER_PROGRAM
    cols = tl.arange(0, BLOCK_W)
    sum_dy_xhat = tl.full([BLOCK_W], 0.0, tl.float32)
    sum_dy = tl.full([BLOCK_W], 0.0, tl.float32)
    for tile in range(first, tl.minimum(first + TILES_PER_PROGRAM, TILES)):
        rows, _, mask, offs = _tile(tile, M, W, BLOCK_M, BLOCK_W)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
        if CENTER:
            shift = tl.load(x_ptr + rows * W, mask=rows < M, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=rows < M, other=0.0)
            xhat = tl.where(mask, ((x - shift[:, None]) - mean[:, None]) * rstd[:, None], 0.0)
        else:
            xhat = x * rstd[:, None]
        sum_dy_xhat += total(dy * xhat, axis=0)
        sum_dy += total(dy, axis=0)
        if STORE_DX:
            gamma = _vector(gamma_ptr, cols, W, HAS_GAMMA, 1.0, BLOCK_W)  # reloaded (cached): fewer registers
            g = dy * gamma[None, :]
            inner = xhat * (total(g * xhat, axis=1) / W)[:, None]
            if CENTER:
                inner += (total(g, axis=1) / W)[:, None]
            dx = rstd[:, None] * (g - inner)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(part_gamma_ptr + pid * W + cols, sum_dy_xhat, mask=cols < W)
    tl.store(part_beta_ptr + pid * W + cols, sum_dy, mask=cols < W)

