"""How normlab's compiled CPU kernels see a call's data (its layout: the
sizes passed to a kernel, in the order of its arguments) and into how many
tasks they split it. The split is a function of the shape only, so that
results do not depend on the thread count: each task keeps its own
partial sums, combined in a fixed order (see ``common.h``)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_PARTIAL_BYTES", "MIN_FUSED_TASKS", "MIN_TASK_ROWS", "MIN_VALUES_PER_PARTIAL", "TASKS",
           "Channels", "Planes", "Rows", "Slices"]

#: Tasks a call is split into, at most.
TASKS = 64

#: Slices run as one task per sample (summed, then normalized while still
#: in cache) for batches of at least this many samples, and otherwise as
#: one task per sample and chunk of positions, in two passes. Measured on
#: an AMD EPYC (Zen 4, AVX-512) virtual machine with 2 cores, group norm of
#: (N, 3136, 256) float32: alone in a loop the two are within noise up to
#: N = 8 (split 0.13 vs 0.20 ms at N = 1), fused 10% faster at N = 16;
#: interleaved with other work at N = 8, fused 2.6 vs 3.7 ms forward.
MIN_FUSED_TASKS = 8

#: Positions a chunk covers at least (the kernels' float block).
MIN_TASK_ROWS = 64

#: Bytes of per-task parameter-gradient sums the rows backward may use.
MAX_PARTIAL_BYTES = 32 << 20

#: Values a rows or affine backward task reads per parameter whose gradient
#: sums it keeps, at least. Layer norm backward, 2 threads (the AMD EPYC
#: above), with up to 64 tasks of a row or more before: (64, 4096) 1.8 ->
#: 0.18 ms, (256, 1024) 0.53 -> 0.15 ms (ATen's: 0.14 and 0.11 ms).
MIN_VALUES_PER_PARTIAL = 32


class Slices(NamedTuple):
    """``x`` as ``(n, s, c)``: statistics per sample and group of ``c // g``
    consecutive channels, over the ``s`` positions; the shift is ``(n, c)``."""

    n: int
    s: int
    c: int
    g: int

    @property
    def stats(self) -> int:
        """Statistics (means, variances) the call computes: ``n * g``."""
        return self.n * self.g

    def chunks(self) -> int:
        """Chunks of positions per sample (1: one fused task per sample)."""
        if self.n >= MIN_FUSED_TASKS:
            return 1
        return max(1, min(-(-TASKS // self.n), -(-self.s // MIN_TASK_ROWS)))


class Rows(NamedTuple):
    """``x`` as ``(r, w)``: statistics per row, each row ``w // p`` channels
    of ``p`` consecutive values, the parameters (``g * w // p``) per channel
    of each of ``g`` consecutive rows: layer norm (``g = p = 1``), group
    norm of ``(N, C)`` data (``N * g`` rows of ``C // g``, ``p = 1``), group
    and instance norm of channels-first ``(N, C, S)`` data (``N * g`` rows of
    ``C // g`` channels, ``p = S``). The shift is ``(r,)``. Uncentered
    (``centered = 0``: RMS norm over trailing axes) there is no shift and
    no mean: the variance is the mean square."""

    r: int
    w: int
    g: int = 1
    p: int = 1
    centered: int = 1

    @property
    def channels(self) -> int:
        """The parameters' size, ``g * w // p``."""
        return self.g * self.w // self.p

    @property
    def stats(self) -> int:
        """Statistics (means, variances) the call computes: one per row."""
        return self.r

    def tasks(self) -> int:
        """Tasks of the forward: rows split evenly."""
        return max(1, min(self.r, TASKS, MAX_PARTIAL_BYTES // (16 * self.channels)))

    def grad_tasks(self) -> int:
        """Tasks of the backward: at most the forward's (:data:`MIN_VALUES_PER_PARTIAL`)."""
        return max(1, min(self.tasks(), self.r * self.w // (MIN_VALUES_PER_PARTIAL * self.channels)))


class Planes(NamedTuple):
    """``x`` as ``(n, c, s)``: statistics per channel over the ``n`` samples
    and ``s`` positions (batch norm of channels-first data); the shift is
    ``(c,)``."""

    n: int
    c: int
    s: int

    @property
    def stats(self) -> int:
        """Statistics (means, variances) the call computes: one per channel."""
        return self.c

    def tasks(self) -> int:
        """Tasks of a call: channels split evenly."""
        return max(1, min(self.c, TASKS))


class Channels(NamedTuple):
    """``x`` as ``(o, c, i)``: batch norm with given per-channel statistics
    (inference), channels-last data as ``(N * S, C, 1)``, channels-first as
    ``(N, C, S)``; no shift (``x - mean`` is formed first)."""

    o: int
    c: int
    i: int

    def tasks(self) -> int:
        """Tasks of the forward: its rows (``i == 1``) or planes split evenly."""
        units = self.o if self.i == 1 else self.o * self.c
        return max(1, min(units, TASKS, MAX_PARTIAL_BYTES // (16 * self.c)))

    def grad_tasks(self) -> int:
        """Tasks of the backward: at most the forward's (:data:`MIN_VALUES_PER_PARTIAL`)."""
        return max(1, min(self.tasks(), self.o * self.i // MIN_VALUES_PER_PARTIAL))
