"""Sums exact to float32 rounding however long, on every backend.

TensorFlow outside XLA sums over an axis that is not innermost one term
after another; :func:`total` arranges its sums so that none is long and
sequential. Other backends' sums over axes that a kept axis splits are
taken innermost run first, then one axis at a time (:data:`INTERLEAVED_SUMS`);
others as they are.
"""

from __future__ import annotations

import functools
import math

import keras
from keras import ops

from normlab.ops.axes import dims
from normlab.types import Tensor

#: TensorFlow (outside XLA) sums over an axis that is not innermost one term
#: after another: the relative error of a float32 sum grows with its length
#: (9e-6 at 2**16 terms, 5.9e-5 at 2**18, 3.7e-3 at 2**22), where its sums
#: over the innermost axes are pairwise (6e-8 at any length). :func:`total`
#: therefore sums the innermost reduced axes first (channels-first data's
#: spatial axes), then the others: longer sums over leading axes as a batched
#: product ``ones (1, 1, R) @ (1, R, K)``, which its matrix kernel blocks
#: (2e-7 to 7e-7 relative at ``2**16`` to ``2**21`` terms, and faster than the
#: sum where K >= 8; the 2-D product ``(1, R) @ (R, 2)`` is sequential again:
#: 4.6e-4), shorter ones in blocks (:func:`_blocked_sum`), and over other axes,
#: or where no block divides the length, a sum over them moved innermost (one transpose).
SEQUENTIAL_SUM_MAX_TERMS = 1 << 15

#: JAX's and torch's sums (eager, ``jax.jit`` and ``torch.compile`` alike)
#: over axes that a kept axis splits, with the innermost among them (a
#: channels-last group's positions and channels, ``(N, H, W, G, C/G)`` over
#: ``(1, 2, 4)``), accumulate the positions one after another: 3.6e-5 relative
#: for 8192 squares of residuals at an offset of 1e6, group norm's output
#: 7.1e-5 off float64. The innermost run is summed first, then the other
#: axes one at a time: torch's inductor fuses a sum over several axes into
#: one loop again (3.6e-5), and keeps sums over one axis apart (5.3e-7).
INTERLEAVED_SUMS = "innermost run first, then one axis at a time"

#: Shorter sums are TensorFlow's own (sequential: a second reduction costs more than it saves).
BLOCKED_SUM_MIN_TERMS = 256


def total(v: Tensor, axes: list[int]) -> Tensor:
    """``ops.sum(v, axes, keepdims=True)``, exact to float32 rounding however
    long the reduction and whichever the axes (see :data:`SEQUENTIAL_SUM_MAX_TERMS`)."""
    rank = len(v.shape)
    axes = sorted(a % rank for a in axes)
    inner = [a for i, a in enumerate(axes) if axes[i:] == list(range(a, rank))]  # the innermost run
    if keras.backend.backend() != "tensorflow":
        if inner and len(inner) < len(axes):  # (see INTERLEAVED_SUMS)
            v = ops.sum(v, axis=inner, keepdims=True)
            for a in reversed(axes[:len(axes) - len(inner)]):
                v = ops.sum(v, axis=a, keepdims=True)
            return v
        return ops.sum(v, axis=axes, keepdims=True)
    if inner:  # summed first, pairwise; the other axes then have fewer terms
        v = ops.sum(v, axis=inner, keepdims=True)
        axes = axes[:len(axes) - len(inner)]
    # An unknown size (a graph's batch) counts as Keras' default batch size, 32:
    # a graph whose other reduced sizes are unknown too sums as TensorFlow does.
    terms = math.prod(32 if v.shape[a] is None else v.shape[a] for a in axes)
    if terms < BLOCKED_SUM_MIN_TERMS:
        return ops.sum(v, axis=axes, keepdims=True) if axes else v
    consecutive = axes == list(range(axes[0], axes[-1] + 1))
    block = _block(math.prod(v.shape[a] for a in axes if v.shape[a] is not None), terms)
    if terms < SEQUENTIAL_SUM_MAX_TERMS and consecutive and block >= 16:
        return _blocked_sum(v, axes, block)
    kept = [a for a in range(rank) if a not in axes]
    width = [v.shape[a] for a in kept]
    if terms >= SEQUENTIAL_SUM_MAX_TERMS and axes == list(range(len(axes))) and None not in width:
        rows = ops.reshape(v, [1, -1, math.prod(width)])  # leading axes: a batched product
        sums = ops.matmul(ops.transpose(ops.ones_like(rows[:, :, :1]), [0, 2, 1]), rows)
    else:
        sums = ops.sum(ops.transpose(v, kept + axes), axis=list(range(len(kept), rank)))
    shape = ops.shape(v)
    return ops.reshape(sums, [1 if a in axes else shape[a] for a in range(rank)])


@functools.lru_cache(maxsize=None)
def _block(known: int, terms: int) -> int:
    """The largest divisor of ``known`` (the product of the reduced axes' known
    sizes) up to the square root of ``terms`` (1 for a prime)."""
    return max(d for d in range(1, math.isqrt(terms) + 1) if known % d == 0)


def _blocked_sum(v: Tensor, axes: list[int], block: int) -> Tensor:
    """:func:`total` of a shorter sum over consecutive axes that are not innermost, on
    TensorFlow: blocks of ``block`` (about ``sqrt(R)``) terms summed, then the block sums,
    in place of one sequential sum of ``R`` terms (31744 squares: 5e-7 relative, not
    1.5e-6 to 4.4e-6). ``block`` divides the reduced length, whatever an unknown size."""
    shape = dims(v)
    blocks = ops.reshape(v, [*shape[:axes[0]], -1, block, *shape[axes[-1] + 1:]])
    sums = ops.sum(ops.sum(blocks, axis=axes[0] + 1), axis=axes[0])
    return ops.reshape(sums, [1 if a in axes else shape[a] for a in range(len(v.shape))])
