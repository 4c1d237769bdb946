"""Interleaved rounds: every implementation of a row once per round, in turn."""

from __future__ import annotations

import argparse
import math
import time

try:
    import resource
except ImportError:  # not on Unix: no preemption counts
    resource = None


def rounds_argument(value: str) -> int:
    """``--rounds`` as argparse takes it: an integer >= 1 (0 or fewer times nothing)."""
    try:
        rounds = int(value)
    except ValueError:
        rounds = 0
    if rounds < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}; e.g. --rounds 5")
    return rounds


def _involuntary_switches():
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw if resource else 0


def time_rounds(fns, rounds, warmup=2, min_sample_s=0.0, calls=None, offset=0):
    """Per-call seconds of each of ``fns`` (``{name: callable}``), one sample per round.

    Each function first runs ``warmup`` times (which also compiles); one
    that raises there is reported as its exception instead of a list. Then
    ``rounds`` rounds each time one sample of every function, the order
    rotated by one each round, starting at ``offset`` (so that no
    implementation always runs right after the same other one, whose cache
    and allocator state it would inherit). A sample is ``calls`` back-to-back
    calls divided by ``calls``; where ``calls`` (``{name: n}``) is not given,
    it is chosen per function from its last warm-up call so that a sample
    lasts at least ``min_sample_s`` (1 where the calls are long enough).

    Returns ``(samples, calls, preempted)``: ``{name: [seconds per call, ...] |
    Exception}``, ``{name: calls per sample}`` and ``{name: samples during
    which the process was preempted}`` (an involuntary context switch: the
    kernel gave the CPU to another task, which a shared machine does).
    """
    alive, samples, chosen = {}, {}, dict(calls or {})
    for name, fn in fns.items():
        try:
            last = None
            for _ in range(warmup):
                start = time.perf_counter()
                fn()
                last = time.perf_counter() - start
            alive[name] = fn
            if name not in chosen:
                chosen[name] = max(1, math.ceil(min_sample_s / last)) if min_sample_s > 0 and last else 1
        except Exception as error:  # a native op this backend lacks
            samples[name] = error
    names = list(alive)
    times = {name: [] for name in names}
    preempted = {name: 0 for name in names}
    for r in range(rounds):
        k = (offset + r) % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn, n = alive[name], chosen[name]
            switches = _involuntary_switches()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
            preempted[name] += _involuntary_switches() > switches
    samples.update(times)
    return samples, chosen, preempted
