"""Triton kernels for channels-last group norm (instance norm is one channel
per group): data ``(N, S, C)``, ``C = G * CG``, contiguous.

A program owns one sample ``n`` and a block of ``CB`` channels holding
whole groups (``BLOCK_C`` lanes, ``CB`` rounded up to a power of two), and
reads rows of ``CB`` contiguous channels: the loads are coalesced along C.
Two block strategies (:mod:`normlab.backends.triton.group_norm` picks one
from the shape):

* **resident**: the program's whole slab ``(S, CB)`` fits in registers
  (``BLOCK_S = next_pow2(S)``): one read of ``x``, two-pass statistics in
  registers, one write of ``y``; the backward likewise reads ``x`` and
  ``dy`` once.
* **chunked**: rows are split into chunks of ``CHUNK`` rows, one program per
  ``(n, chunk, channel block)``. The forward is two kernels: partial
  statistics per chunk and channel (``mean`` and ``M2`` about the group's
  shift, merged over tiles of ``BLOCK_S`` rows with Chan's formula), then
  an apply kernel whose programs each merge the chunks' partials in the
  same fixed order (every program of a sample gets the same bits) and
  normalize their chunk. The backward is two kernels the same way: partial
  ``sum(dy)`` and ``sum(dy * xhat)`` per chunk and channel, then ``dx``.

Exactness: every group is taken about a shift, its first element
``x[n, 0, g * CG]`` (an input value, so ``x - shift`` is exact wherever
the data sits at an offset large against its spread), and the variance
is the mean squared deviation from the residuals' own mean (two passes in
registers, or Chan's merge of such tile statistics), never
``E[x^2] - E[x]^2``. The apply step is ``((x - shift) - mean) * rstd``:
the mean of ``x`` itself is never rounded to the input's scale. An outlier
as the shift costs nothing (the merge is shift-invariant); it only makes
the residuals larger.

Parameter gradients: every program writes its per-channel partial sums
to its own slot of a float32 workspace, ``(N, chunks, C)``; the caller sums
the workspace over samples and chunks. No atomics: the result is the same
bits on every run.
"""

from __future__ import annotations

from normlab.backends.triton.primitives import jit, total
from normlab.backends.triton.runtime import triton

if triton is not None:
    import triton.language as tl


@jit
def _channels(cb, C, CG: tl.constexpr, CB: tl.constexpr, BLOCK_C: tl.constexpr):
    """The lanes of channel block ``cb``: local index, channel, whether it exists."""
    j = tl.arange(0, BLOCK_C)
    c = cb * CB + j
    return j, c, (j < CB) & (c < C)


@jit
def _group_total(v, j, CG: tl.constexpr, ONE_GROUP: tl.constexpr):
    """For each lane, the sum of ``v`` over the lanes of its group."""
    if ONE_GROUP:
        out = tl.full(v.shape, 0.0, tl.float32) + total(v, axis=0)
    else:
        local = j // CG
        out = total(tl.where(local[:, None] == local[None, :], v[:, None], 0.0), axis=0)
    return out


@jit
def _shift(x_ptr, base, c, valid, CG: tl.constexpr):
    """Each lane's group shift: the group's first element, in float32."""
    return tl.load(x_ptr + base + (c // CG) * CG, mask=valid, other=0.0).to(tl.float32)


@jit
def _affine(r, scale, beta_ptr, c, valid, HAS_BETA: tl.constexpr):
    y = r * scale[None, :]
    if HAS_BETA:
        y += tl.load(beta_ptr + c, mask=valid, other=0.0).to(tl.float32)[None, :]
    return y


@jit
def _gamma(gamma_ptr, c, valid, HAS_GAMMA: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each lane's gamma in float32 (ones without one)."""
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr + c, mask=valid, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, tl.float32)
    return gamma


@jit
def forward_resident(x_ptr, y_ptr, gamma_ptr, beta_ptr, mean_ptr, rstd_ptr, S, C, G, eps,
                     CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                     ONE_GROUP: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr):
    """Grid ``(N, channel blocks)``: statistics and output of a whole slab in registers."""
    n = tl.program_id(0)
    j, c, valid = _channels(tl.program_id(1), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift = _shift(x_ptr, base, c, valid, CG)
    rows = tl.arange(0, BLOCK_S)
    mask = (rows[:, None] < S) & valid[None, :]
    offs = base + rows[:, None] * C + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    count = S * CG
    d = tl.where(mask, x - shift[None, :], 0.0)
    mean = _group_total(total(d, axis=0), j, CG, ONE_GROUP) / count
    r = tl.where(mask, d - mean[None, :], 0.0)
    var = _group_total(total(r * r, axis=0), j, CG, ONE_GROUP) / count
    rstd = tl.rsqrt(var + eps)
    y = _affine(r, rstd * _gamma(gamma_ptr, c, valid, HAS_GAMMA, BLOCK_C), beta_ptr, c, valid, HAS_BETA)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    first = valid & (j % CG == 0)
    tl.store(mean_ptr + n * G + c // CG, mean, mask=first)
    tl.store(rstd_ptr + n * G + c // CG, rstd, mask=first)


@jit
def partial_stats(x_ptr, part_mean_ptr, part_m2_ptr, S, C, CHUNK, CHUNKS,
                  CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid ``(N, chunks, channel blocks)``: per channel, the mean and the sum
    of squared deviations (``M2``) of ``x - shift`` over one chunk's rows,
    tile by tile (each tile two-pass in registers), merged with Chan's formula."""
    n = tl.program_id(0)
    k = tl.program_id(1)
    j, c, valid = _channels(tl.program_id(2), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift = _shift(x_ptr, base, c, valid, CG)
    row0 = k * CHUNK
    row_end = tl.minimum(row0 + CHUNK, S)
    mean = tl.full([BLOCK_C], 0.0, tl.float32)
    m2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for start in range(row0, row_end, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < row_end) & valid[None, :]
        x = tl.load(x_ptr + base + rows[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[None, :], 0.0)
        seen = (start - row0) * 1.0
        size = tl.minimum(row_end - start, BLOCK_S) * 1.0
        tile_mean = total(d, axis=0) / size
        r = tl.where(mask, d - tile_mean[None, :], 0.0)
        merged = seen + size
        delta = tile_mean - mean
        mean += delta * (size / merged)
        m2 += total(r * r, axis=0) + delta * delta * (seen * size / merged)
    out = (n * CHUNKS + k) * C + c
    tl.store(part_mean_ptr + out, mean, mask=valid)
    tl.store(part_m2_ptr + out, m2, mask=valid)


@jit
def _merged_stats(part_mean_ptr, part_m2_ptr, n, j, c, valid, S, C, CHUNK, CHUNKS, eps,
                  CG: tl.constexpr, BLOCK_C: tl.constexpr, ONE_GROUP: tl.constexpr):
    """Each lane's group mean (of ``x - shift``) and rstd, from the chunks'
    partials merged in chunk order (Chan), then over the group's channels."""
    mean = tl.full([BLOCK_C], 0.0, tl.float32)
    m2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for q in range(0, CHUNKS):
        at = (n * CHUNKS + q) * C + c
        part_mean = tl.load(part_mean_ptr + at, mask=valid, other=0.0)
        part_m2 = tl.load(part_m2_ptr + at, mask=valid, other=0.0)
        seen = q * CHUNK * 1.0
        size = tl.minimum(S - q * CHUNK, CHUNK) * 1.0
        merged = seen + size
        delta = part_mean - mean
        mean += delta * (size / merged)
        m2 += part_m2 + delta * delta * (seen * size / merged)
    group_mean = _group_total(mean, j, CG, ONE_GROUP) / CG  # every channel holds S values
    deviation = tl.where(valid, mean - group_mean, 0.0)
    var = _group_total(m2 + S * deviation * deviation, j, CG, ONE_GROUP) / (S * CG)
    return group_mean, tl.rsqrt(var + eps)


@jit
def apply_chunk(x_ptr, y_ptr, gamma_ptr, beta_ptr, part_mean_ptr, part_m2_ptr, mean_ptr, rstd_ptr,
                S, C, G, CHUNK, CHUNKS, eps,
                CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                ONE_GROUP: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr):
    """Grid ``(N, chunks, channel blocks)``: merge the partials, normalize one
    chunk; the chunk-0 programs also store each group's mean and rstd."""
    n = tl.program_id(0)
    k = tl.program_id(1)
    j, c, valid = _channels(tl.program_id(2), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift = _shift(x_ptr, base, c, valid, CG)
    mean, rstd = _merged_stats(part_mean_ptr, part_m2_ptr, n, j, c, valid, S, C, CHUNK, CHUNKS, eps,
                               CG, BLOCK_C, ONE_GROUP)
    first = valid & (j % CG == 0) & (tl.full([BLOCK_C], 0, tl.int32) + k == 0)
    tl.store(mean_ptr + n * G + c // CG, mean, mask=first)
    tl.store(rstd_ptr + n * G + c // CG, rstd, mask=first)
    scale = rstd * _gamma(gamma_ptr, c, valid, HAS_GAMMA, BLOCK_C)
    row0 = k * CHUNK
    row_end = tl.minimum(row0 + CHUNK, S)
    for start in range(row0, row_end, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < row_end) & valid[None, :]
        offs = base + rows[:, None] * C + c[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = (x - shift[None, :]) - mean[None, :]
        y = _affine(r, scale, beta_ptr, c, valid, HAS_BETA)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------
# Backward. With ``xhat = ((x - shift) - mean) * rstd`` and ``g = dy * gamma``,
# over each group: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``.
# Per channel ``a = sum(dy)`` and ``b = sum(dy * xhat)`` over its rows give
# both group means (``sum(gamma * a)``, ``sum(gamma * b)`` over the group)
# and, summed over samples, ``dbeta`` and ``dgamma``.


@jit
def _saved_stats(x_ptr, mean_ptr, rstd_ptr, n, base, c, valid, G, CG: tl.constexpr):
    """Each lane's group shift, mean and rstd, as the forward saved them."""
    at = n * G + c // CG
    shift = _shift(x_ptr, base, c, valid, CG)
    return shift, tl.load(mean_ptr + at, mask=valid, other=0.0), tl.load(rstd_ptr + at, mask=valid, other=0.0)


@jit
def _tile_grads(x_ptr, dy_ptr, offs, mask, shift, mean, rstd):
    """``(dy, xhat)`` of one tile in float32, zero outside ``mask``."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, ((x - shift[None, :]) - mean[None, :]) * rstd[None, :], 0.0)
    return dy, xhat


@jit
def _dx(dy, xhat, rstd, gamma, mean_g, mean_gx):
    return rstd[None, :] * (dy * gamma[None, :] - mean_g[None, :] - xhat * mean_gx[None, :])


@jit
def backward_resident(x_ptr, dy_ptr, dx_ptr, gamma_ptr, mean_ptr, rstd_ptr, part_a_ptr, part_b_ptr, S, C, G,
                      CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                      ONE_GROUP: tl.constexpr, HAS_GAMMA: tl.constexpr, STORE_DX: tl.constexpr):
    """Grid ``(N, channel blocks)``: a whole slab's ``dx`` and per-channel ``a``, ``b``."""
    n = tl.program_id(0)
    j, c, valid = _channels(tl.program_id(1), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift, mean, rstd = _saved_stats(x_ptr, mean_ptr, rstd_ptr, n, base, c, valid, G, CG)
    rows = tl.arange(0, BLOCK_S)
    mask = (rows[:, None] < S) & valid[None, :]
    offs = base + rows[:, None] * C + c[None, :]
    dy, xhat = _tile_grads(x_ptr, dy_ptr, offs, mask, shift, mean, rstd)
    a = total(dy, axis=0)
    b = total(dy * xhat, axis=0)
    tl.store(part_a_ptr + n * C + c, a, mask=valid)
    tl.store(part_b_ptr + n * C + c, b, mask=valid)
    if STORE_DX:
        gamma = _gamma(gamma_ptr, c, valid, HAS_GAMMA, BLOCK_C)
        count = S * CG
        mean_g = _group_total(gamma * a, j, CG, ONE_GROUP) / count
        mean_gx = _group_total(gamma * b, j, CG, ONE_GROUP) / count
        dx = _dx(dy, xhat, rstd, gamma, mean_g, mean_gx)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@jit
def partial_grads(x_ptr, dy_ptr, mean_ptr, rstd_ptr, part_a_ptr, part_b_ptr, S, C, G, CHUNK, CHUNKS,
                  CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid ``(N, chunks, channel blocks)``: per channel ``a`` and ``b`` over one chunk."""
    n = tl.program_id(0)
    k = tl.program_id(1)
    j, c, valid = _channels(tl.program_id(2), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift, mean, rstd = _saved_stats(x_ptr, mean_ptr, rstd_ptr, n, base, c, valid, G, CG)
    row0 = k * CHUNK
    row_end = tl.minimum(row0 + CHUNK, S)
    a = tl.full([BLOCK_C], 0.0, tl.float32)
    b = tl.full([BLOCK_C], 0.0, tl.float32)
    for start in range(row0, row_end, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < row_end) & valid[None, :]
        dy, xhat = _tile_grads(x_ptr, dy_ptr, base + rows[:, None] * C + c[None, :], mask, shift, mean, rstd)
        a += total(dy, axis=0)
        b += total(dy * xhat, axis=0)
    out = (n * CHUNKS + k) * C + c
    tl.store(part_a_ptr + out, a, mask=valid)
    tl.store(part_b_ptr + out, b, mask=valid)


@jit
def grad_input_chunk(x_ptr, dy_ptr, dx_ptr, gamma_ptr, mean_ptr, rstd_ptr, part_a_ptr, part_b_ptr,
                     S, C, G, CHUNK, CHUNKS,
                     CG: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                     ONE_GROUP: tl.constexpr, HAS_GAMMA: tl.constexpr):
    """Grid ``(N, chunks, channel blocks)``: sum the chunks' ``a``, ``b`` of
    the sample (in chunk order), then ``dx`` of one chunk."""
    n = tl.program_id(0)
    k = tl.program_id(1)
    j, c, valid = _channels(tl.program_id(2), C, CG, CB, BLOCK_C)
    base = n * S * C
    shift, mean, rstd = _saved_stats(x_ptr, mean_ptr, rstd_ptr, n, base, c, valid, G, CG)
    a = tl.full([BLOCK_C], 0.0, tl.float32)
    b = tl.full([BLOCK_C], 0.0, tl.float32)
    for q in range(0, CHUNKS):
        at = (n * CHUNKS + q) * C + c
        a += tl.load(part_a_ptr + at, mask=valid, other=0.0)
        b += tl.load(part_b_ptr + at, mask=valid, other=0.0)
    gamma = _gamma(gamma_ptr, c, valid, HAS_GAMMA, BLOCK_C)
    count = S * CG
    mean_g = _group_total(gamma * a, j, CG, ONE_GROUP) / count
    mean_gx = _group_total(gamma * b, j, CG, ONE_GROUP) / count
    row0 = k * CHUNK
    row_end = tl.minimum(row0 + CHUNK, S)
    for start in range(row0, row_end, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < row_end) & valid[None, :]
        offs = base + rows[:, None] * C + c[None, :]
        dy, xhat = _tile_grads(x_ptr, dy_ptr, offs, mask, shift, mean, rstd)
        dx = _dx(dy, xhat, rstd, gamma, mean_g, mean_gx)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
