"""Statistics over interleaved rounds: summaries, per-round ratios, decisions, rank test.

NumPy and SciPy only, so that the tests run on any backend without
importing a framework.

A *round* times one call of every implementation of a row in turn (the
order rotated from round to round). A slow spell of a shared machine then
hits every implementation of that round alike, so the ratio of two
implementations' times *within a round* is far steadier than either time.
Each ratio is reported as the median of its per-round values with the
interquartile range (IQR) of those values as its spread, and a ratio whose
spread is too wide is *undecided* rather than a number.
"""

from __future__ import annotations

import math

import numpy as np

#: A ratio is undecided where the IQR of its per-round values is wider than
#: this fraction of its median (0.3: the middle half of the rounds spans more
#: than +/-15% around the median).
MAX_SPREAD = 0.3
#: ... or where its median is less precise than this: the median's relative
#: standard error, estimated from the IQR as for normal data
#: (``1.253 * (IQR / 1.349) / sqrt(rounds)``, relative to the median). At
#: 2.8% two runs of the same code agree within 10%: measured on this 2-core
#: VM, two back-to-back runs (70 rows) had 83 ratios decided by the spread
#: alone, 7 of them more than 10% apart (up to 35%); with this bound (at 25
#: rounds, a spread within 0.15) 30 were decided, at most 8.1% apart.
MAX_MEDIAN_ERROR = 0.028
#: Fewer valid rounds than this decide nothing.
MIN_ROUNDS = 5

#: The per-round ratios kept for each row: name -> (numerator, denominator).
RATIOS = {
    "speedup_vs_keras": ("keras", "normlab"),
    "keras_over_floor": ("keras", "floor"),
    "normlab_over_native": ("normlab", "native"),
    "general_over_normlab": ("general", "normlab"),
}
IMPLS = ("normlab", "general", "keras", "native", "floor")


def quantile(values, q):
    """The ``q``-quantile of ``values``, linear interpolation (NumPy's default)."""
    values = list(values)
    if not values:
        raise ValueError("quantile of no values")
    return float(np.quantile(values, q))


def median(values):
    return quantile(values, 0.5)


def summarize(seconds):
    """Min, quartiles and median (ms) of one implementation's per-round times (s)."""
    ms = [s * 1e3 for s in seconds]
    return {"ms": median(ms), "min_ms": min(ms), "q25_ms": quantile(ms, 0.25),
            "q75_ms": quantile(ms, 0.75), "rounds": len(ms), "rounds_ms": ms}


def median_error(spread, rounds):
    """The relative standard error of a median of ``rounds`` values whose IQR is
    ``spread`` times the median (normal approximation; see :data:`MAX_MEDIAN_ERROR`)."""
    return 1.2533 * spread / 1.349 / math.sqrt(rounds)


def is_decided(rounds, spread, max_spread=MAX_SPREAD, min_rounds=MIN_ROUNDS, max_median_error=MAX_MEDIAN_ERROR):
    """The rule for a ratio over ``rounds`` per-round values whose IQR is ``spread`` of their median."""
    return rounds >= min_rounds and spread <= max_spread and median_error(spread, rounds) <= max_median_error


def ratio_stats(numerator, denominator, max_spread=MAX_SPREAD, min_rounds=MIN_ROUNDS,
                max_median_error=MAX_MEDIAN_ERROR):
    """The per-round ratios ``numerator[i] / denominator[i]``: median, IQR, spread, decided.

    ``spread`` is the IQR over the median, ``median_error`` the median's
    relative standard error; the ratio is ``decided`` where at least
    ``min_rounds`` rounds have both times, ``spread <= max_spread`` and
    ``median_error <= max_median_error`` (more rounds decide wider spreads).
    """
    if len(numerator) != len(denominator):
        raise ValueError(f"rounds differ: {len(numerator)} vs {len(denominator)}")
    r = [a / b for a, b in zip(numerator, denominator) if b > 0 and a > 0]
    if not r:
        return {"median": None, "q25": None, "q75": None, "spread": None, "median_error": None, "rounds": 0,
                "decided": False}
    med, q25, q75 = median(r), quantile(r, 0.25), quantile(r, 0.75)
    spread = (q75 - q25) / med
    error = median_error(spread, len(r))
    return {"median": med, "q25": q25, "q75": q75, "spread": spread, "median_error": error, "rounds": len(r),
            "decided": is_decided(len(r), spread, max_spread, min_rounds, max_median_error)}


def summarize_row(seconds, moved_bytes, max_spread=MAX_SPREAD, min_rounds=MIN_ROUNDS):
    """One row from the per-round seconds of each implementation (``{impl: [s, ...]}``).

    Each implementation gets :func:`summarize` plus its effective bandwidth at
    the median; each ratio of :data:`RATIOS` whose two sides were timed gets
    :func:`ratio_stats` under ``row["ratios"]``, and its median, or None where
    undecided, under its own key (``row["speedup_vs_keras"]``, ...).
    """
    row = {}
    for impl, ts in seconds.items():
        row[impl] = summarize(ts)
        row[impl]["GB/s"] = moved_bytes / (row[impl]["ms"] / 1e3) / 1e9
    row["ratios"] = {}
    for name, (num, den) in RATIOS.items():
        if num in seconds and den in seconds:
            stats = ratio_stats(seconds[num], seconds[den], max_spread, min_rounds)
            row["ratios"][name] = stats
            row[name] = stats["median"] if stats["decided"] else None
    return row


def format_ratio(stats, width=0):
    """``4.80±3%`` (median, half the IQR relative to it), ``undecided`` or ``—``."""
    if not stats or stats["median"] is None:
        text = "—"
    elif not stats["decided"]:
        text = "undecided"
    else:
        text = f"{stats['median']:.2f}±{50 * stats['spread']:.0f}%"
    return f"{text:>{width}}"


def decide(stats, need, higher_is_better=True):
    """``met``, ``missed`` or ``undecided`` for a target on a ratio's per-round IQR.

    Met where the middle half of the rounds is on the right side of ``need``
    (``q25 >= need``, or ``q75 <= need`` where lower is better), missed where
    it is all on the wrong side; undecided where the IQR straddles ``need``
    or the ratio itself is undecided (too few rounds, or an IQR too wide
    for its median: on a loaded machine a whole IQR can sit on one side of
    a target by chance).
    """
    if not stats or stats["median"] is None or not stats["decided"]:
        return "undecided"
    good, bad = (stats["q25"] >= need, stats["q75"] < need) if higher_is_better else \
        (stats["q75"] <= need, stats["q25"] > need)
    return "met" if good else "missed" if bad else "undecided"


# ---------------------------------------------------------------------------
# Two runs: the Mann-Whitney rank test and the Hodges-Lehmann shift.

TEST_NAME = "Mann-Whitney U, two-sided, normal approximation with tie and continuity correction"


def mann_whitney(x, y):
    """Mann-Whitney U of ``x`` against ``y``: ``{"u": U_x, "p": two-sided p}``.

    ``scipy.stats.mannwhitneyu`` with the normal approximation (average ranks
    for ties, the tie-corrected variance, a continuity correction of 1/2);
    samples tied throughout give ``p = 1``.
    """
    if len(x) == 0 or len(y) == 0:
        raise ValueError("Mann-Whitney needs two non-empty samples")
    from scipy import stats as scipy_stats

    result = scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)
    p = float(result.pvalue)
    return {"u": float(result.statistic), "p": 1.0 if math.isnan(p) else p}


def hodges_lehmann_ratio(base, current):
    """The median over all pairs of ``current[j] / base[i]``: the shift the rank test sees, as a ratio."""
    return median([c / b for b in base for c in current if b > 0])


def compare_samples(base, current, alpha=0.01, min_effect=0.05, min_rounds=MIN_ROUNDS):
    """Whether ``current`` is lower ("faster"), higher ("slower") than ``base`` or "within noise".

    Samples are per-round times or per-round time ratios (lower is faster).
    A difference counts where the rank test gives ``p < alpha`` and the
    Hodges-Lehmann ratio is more than ``min_effect`` away from 1; fewer than
    ``min_rounds`` rounds on either side give "too few rounds".
    """
    base, current = [v for v in base if v > 0], [v for v in current if v > 0]
    out = {"n_base": len(base), "n_current": len(current)}
    if len(base) < min_rounds or len(current) < min_rounds:
        return {**out, "verdict": "too few rounds", "p": None, "u": None, "ratio": None}
    test = mann_whitney(current, base)
    ratio = hodges_lehmann_ratio(base, current)
    verdict = "within noise"
    if test["p"] < alpha and abs(ratio - 1) > min_effect:
        verdict = "slower" if ratio > 1 else "faster"
    return {**out, "verdict": verdict, "p": test["p"], "u": test["u"], "ratio": ratio,
            "median_base": median(base), "median_current": median(current)}
