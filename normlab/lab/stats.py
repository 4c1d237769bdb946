"""Statistics for the lab's reports: means over seeds, t intervals, paired differences.

Student's t distribution comes from SciPy (``scipy.stats.t``, imported on
first use).

Runs with the same seed start from the same weights and see the same batches
in every configuration of a grid, so a configuration's difference to a
baseline is best judged seed by seed: :func:`paired` gives the mean paired
difference, its 95% interval and the paired t-test's p-value.

Example:
    >>> from normlab.lab.stats import paired, t_quantile
    >>> round(t_quantile(0.975, 2), 4)
    4.3027
    >>> d = paired({0: 0.90, 1: 0.92, 2: 0.91}, {0: 0.89, 1: 0.90, 2: 0.90})
    >>> round(d["mean"], 4), d["n"], d["verdict"]
    (0.0133, 3, 'within noise')
"""

from __future__ import annotations

import functools
import math


def _t():
    from scipy import stats as scipy_stats

    return scipy_stats.t


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (NaN for NaN or ``df < 1``)."""
    if math.isnan(t) or df < 1:
        return math.nan
    return float(2.0 * _t().sf(abs(t), df))


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (NaN for ``df < 1`` or ``p`` outside (0, 1))."""
    if df < 1 or not 0.0 < p < 1.0:
        return math.nan
    return float(_t().ppf(p, df))


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t: the factor of a two-sided 95% interval."""
    return t_quantile(0.975, df) if df >= 1 else math.nan


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def stats(values, resolution: float = 0.0) -> dict:
    """n, mean, std (n-1) and the 95% half-width ``t * std / sqrt(n)`` (NaN when n < 2).

    ``None`` and non-finite values (a diverged run's loss) are left out. ``resolution`` is the
    step the values come in (``1 / test size`` for an accuracy), or 0 (default)
    for continuous values: the interval then takes their spread as at least
    ``resolution / sqrt(12)``, the spread of a value rounded to that step, so
    seeds that score the same get an interval, not a zero-width one (``std``
    stays the sample's).
    """
    values = [float(v) for v in values if _finite(v)]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    spread = max(std, resolution / math.sqrt(12.0)) if n > 1 else std
    return {"n": n, "mean": mean, "std": std,
            "ci95": t975(n - 1) * spread / math.sqrt(n) if n > 1 else math.nan}


def paired(values: dict, baseline: dict, resolution: float = 0.0) -> dict:
    """The paired difference ``values - baseline`` over the seeds both have.

    Args:
        values, baseline: ``{seed: value}``; ``None`` and non-finite values
            (a diverged run's) are left out, with their seed on both sides.
        resolution: the step the values come in (``1 / test size`` for an
            accuracy), or 0 (default) for continuous values. The t interval and
            test then take the differences' spread as at least
            ``resolution / sqrt(6)``, the spread of a difference of two values
            rounded to that step: equal differences on every seed (common with
            accuracies) get the interval of nearly equal ones instead of a
            zero-width one, so the verdict does not jump between the two.

    Returns:
        ``n``, ``seeds``, ``diffs`` (per seed), ``mean``, ``std``, ``ci95`` (half-width),
        ``low``, ``high`` (the 95% interval), ``t``, ``p`` (two-sided paired t-test) and
        ``verdict``: "within noise" when the interval includes 0, "higher" or
        "lower" when it does not, "one seed", "no common seeds" or "diverged on
        every shared seed" when there is no interval. Without a ``resolution``, when every seed gives the same
        non-zero difference there is no t interval (``ci95``, ``low`` and
        ``high`` are NaN, ``t`` is infinite): ``p`` is then the exact sign-flip
        test's (:func:`sign_flip_p`, 0.5 for two seeds, not the t-test's limit
        0), and the verdict follows ``p < 0.05``. ``std`` is the differences'
        sample standard deviation either way.
    """
    shared = [s for s in values if s in baseline]
    seeds = sorted(s for s in shared if _finite(values[s]) and _finite(baseline[s]))
    # Rounded so that equal differences of accuracies (multiples of 1/n, stored from
    # float32 metrics: 0.92 - 0.90 and 0.53 - 0.51 differ by 6e-8 there) compare equal.
    diffs = [round(float(values[s]) - float(baseline[s]), 6) for s in seeds]
    s = stats(diffs)
    n, std = s["n"], s["std"]
    # The differences are multiples of 1e-6: their mean needs no more than 12 decimals, and
    # a sum that cancels (+0.03 - 0.01 - 0.02) leaves -1e-18, shown as -0.00 (+ 0.0: no -0.0).
    mean = round(s["mean"], 12) + 0.0 if n else s["mean"]
    if n > 1 and len(set(diffs)) == 1:
        std = 0.0  # not the 1e-18 that summing equal floats leaves
    spread = max(std, resolution / math.sqrt(6.0)) if n > 1 else std  # see `resolution`
    ci95 = t975(n - 1) * spread / math.sqrt(n) if n > 1 else math.nan
    out = dict(n=n, seeds=seeds, diffs=diffs, mean=mean, std=std, ci95=ci95,
               low=mean - ci95, high=mean + ci95, t=math.nan, p=math.nan)
    if n == 0:  # (every shared seed dropped: a run diverged on one side or the other)
        return {**out, "verdict": "diverged on every shared seed" if shared else "no common seeds"}
    if n == 1:
        return {**out, "verdict": "one seed"}
    if spread == 0.0 and mean != 0.0:  # the same difference on every seed: no t interval
        out.update(t=math.copysign(math.inf, mean), p=sign_flip_p(n), ci95=math.nan,
                   low=math.nan, high=math.nan)
        verdict = ("higher" if mean > 0 else "lower") if out["p"] < 0.05 else "within noise"
        return {**out, "verdict": verdict}
    if spread == 0.0:
        out.update(t=0.0, p=1.0)
    else:
        out["t"] = mean / (spread / math.sqrt(n))
        out["p"] = t_two_sided_p(out["t"], n - 1)
    if out["low"] <= 0.0 <= out["high"]:
        verdict = "within noise"
    else:
        verdict = "higher" if mean > 0 else "lower"
    return {**out, "verdict": verdict}


def sign_flip_p(n: int) -> float:
    """The exact sign-flip test's two-sided p-value for ``n`` equal non-zero differences.

    Under the null hypothesis each seed's difference is as likely negative as
    positive; of the ``2**n`` sign patterns, the two with every sign the same
    are as extreme as the data, so p = 2 / 2**n (0.5 for two seeds, 0.031 for six).
    """
    return min(1.0, 2.0 ** (1 - n))
