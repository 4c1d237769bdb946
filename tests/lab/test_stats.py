"""The lab's Student-t helpers, paired differences and the sign-flip p-value (SciPy's
ttest_rel the reference)."""

import math

import pytest

from normlab.lab.stats import paired, sign_flip_p, stats, t975, t_quantile, t_two_sided_p

scipy_stats = pytest.importorskip("scipy.stats", reason="SciPy is the reference here")


def test_t_helpers_give_the_textbook_values_and_nan_outside_their_domain():
    # Two-sided 95% factors from the t table; p-values of |t| = t975 are 0.05.
    for df, factor in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert t_quantile(0.975, df) == pytest.approx(factor, abs=5e-4)
        assert t_two_sided_p(t_quantile(0.975, df), df) == pytest.approx(0.05, rel=1e-9)
        assert t_two_sided_p(-t_quantile(0.975, df), df) == pytest.approx(0.05, rel=1e-9)
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_two_sided_p(math.inf, 3) == 0.0 and t_two_sided_p(0.0, 3) == 1.0
    for value in (t_quantile(0.975, 0), t_quantile(1.0, 3), t_quantile(0.0, 3),
                  t_two_sided_p(math.nan, 3), t_two_sided_p(1.0, 0)):
        assert math.isnan(value)


def test_t975_edges():
    assert math.isnan(t975(0)) and t975(10**6) == pytest.approx(1.95996, abs=1e-5)


def test_stats_skip_missing_and_non_finite_values():
    assert stats([0.5, None, float("nan")])["n"] == 1


def test_paired_matches_scipy_ttest_rel():
    a = {0: 0.951, 1: 0.962, 2: 0.955, 3: 0.949, 4: 0.958}
    b = {0: 0.947, 1: 0.960, 2: 0.957, 3: 0.941, 4: 0.950, 9: 0.5}  # seed 9 has no pair
    d = paired(a, b)
    ref = scipy_stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)])
    assert d["n"] == 5 and d["seeds"] == [0, 1, 2, 3, 4]
    assert d["t"] == pytest.approx(ref.statistic) and d["p"] == pytest.approx(ref.pvalue)
    interval = ref.confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((interval.low, interval.high))
    assert d["verdict"] == ("within noise" if d["low"] <= 0 <= d["high"] else "higher")


def test_paired_edge_cases():
    assert paired({0: 0.9}, {0: 0.8})["verdict"] == "one seed"
    assert paired({0: 0.9}, {1: 0.8})["verdict"] == "no common seeds"
    same = paired({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert same["p"] == 1.0 and same["verdict"] == "within noise"
    shifted = paired({0: 0.91, 1: 0.81}, {0: 0.9, 1: 0.8})  # +0.01 twice, up to rounding
    assert shifted["p"] == 0.5 and shifted["verdict"] == "within noise"
    assert math.isnan(shifted["low"]) and math.isinf(shifted["t"])


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8])
@pytest.mark.parametrize("step", [0.005, -0.0125])
def test_paired_same_difference_every_seed_is_a_sign_flip_test(n, step):
    """Equal non-zero differences (common with accuracies, multiples of 1/test size) have no
    t interval; their p is the exact sign-flip permutation test's, not the t-test's limit 0."""
    import numpy as np

    base = {seed: 0.5 + 0.03 * seed for seed in range(n)}
    d = paired({seed: v + step for seed, v in base.items()}, base)
    ref = scipy_stats.permutation_test((np.full(n, step),), np.mean, permutation_type="samples",
                                       n_resamples=np.inf)
    assert d["p"] == pytest.approx(ref.pvalue)
    assert d["verdict"] == (("higher" if step > 0 else "lower") if n >= 6 else "within noise")
    assert d["mean"] == pytest.approx(step) and math.isnan(d["ci95"])


def test_equal_differences_of_float32_accuracies_count_as_equal():
    """The lab's accuracies come from float32 metrics: 92/100 - 90/100 and 53/100 - 51/100
    differ there by 6e-8, which gave an interval, p = 1e-6 and "higher" from two runs."""
    import numpy as np

    f32 = lambda k: float(np.float32(k / 100))  # noqa: E731
    d = paired({0: f32(92), 1: f32(53)}, {0: f32(90), 1: f32(51)})
    assert d["p"] == 0.5 and d["verdict"] == "within noise" and math.isnan(d["low"])


@pytest.mark.parametrize("n", [2, 3, 6])
def test_a_resolution_makes_equal_differences_continuous_with_nearly_equal_ones(n):
    """With accuracies' step (1 / test size) given, the spread is at least resolution / sqrt(6):
    differences [0.01, 0.01, 0.01] gave p = 0.25 and [0.01, 0.01, 0.0101] p = 1e-5."""
    base = {seed: 0.5 + 0.03 * seed for seed in range(n)}
    equal = paired({s: v + 0.002 for s, v in base.items()}, base, resolution=1e-3)
    nudged = paired({s: v + 0.002 + (1e-5 if s == 0 else 0.0) for s, v in base.items()}, base, resolution=1e-3)
    assert equal["std"] == 0.0 and equal["ci95"] > 0
    assert equal["p"] == pytest.approx(nudged["p"], rel=0.05)
    assert equal["verdict"] == nudged["verdict"]
    t = 0.002 / (1e-3 / math.sqrt(6) / math.sqrt(n))
    assert equal["p"] == pytest.approx(2 * scipy_stats.t.sf(t, n - 1))
    # a spread above the floor is the plain t-test's
    spread = {s: v + 0.002 + 0.004 * (s % 2) for s, v in base.items()}
    assert paired(spread, base, resolution=1e-3)["p"] == paired(spread, base)["p"]


def test_paired_lists_seeds_and_their_differences_in_seed_order():
    """The report prints ``diffs`` beside ``seeds`` (``0: +0.10, 1: ...``): both follow the
    seed numbers, not the order the runs were read in (parallel executors finish in any order)."""
    values = {2: 0.90, 0: 0.80, 1: 0.70}
    baseline = {1: 0.60, 2: 0.85, 0: 0.70}
    d = paired(values, baseline)
    assert d["seeds"] == [0, 1, 2]
    assert d["diffs"] == pytest.approx([0.10, 0.10, 0.05])


def test_paired_leaves_out_a_seed_missing_on_either_side():
    """A diverged run stores ``None``: the seed is dropped whichever side it is on (a ``None``
    baseline value made ``float(None)`` fail), and the rest is SciPy's paired t-test."""
    values = {0: 0.91, 1: None, 2: 0.88, 3: 0.93, 4: 0.90}
    baseline = {0: 0.90, 1: 0.85, 2: None, 3: 0.90, 4: 0.86}
    d = paired(values, baseline)
    assert d["seeds"] == [0, 3, 4] and d["n"] == 3
    ref = scipy_stats.ttest_rel([0.91, 0.93, 0.90], [0.90, 0.90, 0.86])
    assert d["mean"] == pytest.approx((0.01 + 0.03 + 0.04) / 3)
    assert d["t"] == pytest.approx(ref.statistic) and d["p"] == pytest.approx(ref.pvalue)


def test_sign_flip_p_is_two_over_two_to_the_n_and_never_above_one():
    """2 / 2**n: 1 for one seed, 0.5 for two, 1/32 for six; a probability, so at most 1
    even for the degenerate n = 0 (2 / 2**0 = 2)."""
    assert [sign_flip_p(n) for n in (1, 2, 3, 6)] == [1.0, 0.5, 0.25, 0.03125]
    assert sign_flip_p(0) == 1.0
    assert all(0.0 < sign_flip_p(n) <= 1.0 for n in range(0, 12))
    assert not math.isnan(sign_flip_p(0))


def test_a_mean_of_accuracies_that_tie_gets_the_interval_of_their_step():
    """Two seeds scoring the same 8460 of 10000 images: the interval took their spread, 0, and
    printed [84.60, 84.60]; it takes at least one step (1/10000) / sqrt(12), the spread of a
    value rounded to it. The std stays the sample's, and a wider spread is kept as it is."""
    s = stats([0.846, 0.846], resolution=1e-4)
    assert s["std"] == 0.0
    assert s["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 1) * 1e-4 / math.sqrt(12) / math.sqrt(2))
    wide = stats([0.80, 0.90], resolution=1e-4)
    assert wide["ci95"] == pytest.approx(stats([0.80, 0.90])["ci95"])
    assert math.isnan(stats([0.846], resolution=1e-4)["ci95"])  # one seed: no interval


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_paired_leaves_out_a_seed_with_a_non_finite_value_on_either_side(bad):
    """As ``stats`` does: a NaN or infinite value (a diverged run's, passed as it is) drops its
    seed from both sides, so ``n``, ``seeds`` and ``diffs`` agree."""
    d = paired({0: bad, 1: 0.9, 2: 0.8, 3: 0.7}, {0: 0.5, 1: 0.5, 2: 0.6, 3: bad})
    assert d["n"] == 2 and d["seeds"] == [1, 2]
    assert d["diffs"] == pytest.approx([0.4, 0.2])
    assert d["t"] == pytest.approx(scipy_stats.ttest_rel([0.9, 0.8], [0.5, 0.6]).statistic)


def test_paired_keeps_differences_to_six_decimals():
    """Rounding only absorbs float32 noise (6e-8): differences of a few thousandths of a point
    (4e-5, 3e-4, 1e-4) are kept as they are, and the test is SciPy's paired t-test on them."""
    values = {0: 0.90004, 1: 0.9003, 2: 0.9001}
    baseline = {0: 0.9, 1: 0.9, 2: 0.9}
    d = paired(values, baseline)
    assert d["diffs"] == pytest.approx([4e-5, 3e-4, 1e-4], abs=1e-12)
    ref = scipy_stats.ttest_rel([0.90004, 0.9003, 0.9001], [0.9, 0.9, 0.9])
    assert d["t"] == pytest.approx(ref.statistic, rel=1e-6) and d["p"] == pytest.approx(ref.pvalue, rel=1e-6)


def test_one_shared_seed_has_no_spread_statistic_or_test():
    """A single difference has no sample standard deviation (NaN, as ``stats`` gives), no
    interval and no t-test: only its value."""
    d = paired({0: 0.93, 1: 0.5}, {0: 0.90})
    assert d["n"] == 1 and d["diffs"] == pytest.approx([0.03]) and d["mean"] == pytest.approx(0.03)
    for key in ("std", "ci95", "low", "high", "t", "p"):
        assert math.isnan(d[key]), key
    assert math.isnan(paired({0: 0.93}, {0: 0.90}, resolution=0.01)["std"])


@pytest.mark.parametrize("step", [0.01, -0.01])
def test_the_same_difference_on_every_seed_has_an_infinite_t_of_its_sign(step):
    """No spread: t is +inf for a gain and -inf for a loss, the limit of mean / (std / sqrt(n))
    as the spread goes to 0; its sign says the direction."""
    base = {seed: 0.5 + 0.03 * seed for seed in range(3)}
    d = paired({s: v + step for s, v in base.items()}, base)
    assert d["t"] == math.copysign(math.inf, step) and d["std"] == 0.0


def test_paired_names_shared_seeds_lost_to_divergence_and_shows_no_negative_zero():
    assert paired({0: None, 1: math.nan}, {0: 0.9, 1: 0.92})["verdict"] == "diverged on every shared seed"
    assert paired({0: None}, {1: 0.9})["verdict"] == "no common seeds"
    # +0.03, -0.01, -0.02 sum to -1.2e-18 in floats: the mean was shown as -0.00
    d = paired({0: 0.93, 1: 0.91, 2: 0.90}, {0: 0.90, 1: 0.92, 2: 0.92})
    assert d["mean"] == 0.0 and math.copysign(1.0, d["mean"]) == 1.0 and d["p"] == 1.0
