"""Per-round summaries, ratios with their spread, undecided rows, target decisions."""

import random

import pytest
from normbench import stats


def test_quantile_matches_linear_interpolation():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert stats.quantile(xs, 0.0) == 1.0
    assert stats.quantile(xs, 1.0) == 4.0
    assert stats.quantile(xs, 0.5) == 2.5
    assert stats.quantile(xs, 0.25) == pytest.approx(1.75)
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)


def test_summarize_reports_min_median_and_quartiles_in_ms():
    s = stats.summarize([0.003, 0.001, 0.002, 0.010, 0.004])
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["ms"] == pytest.approx(3.0)
    assert (s["q25_ms"], s["q75_ms"]) == (pytest.approx(2.0), pytest.approx(4.0))
    assert s["rounds"] == 5 and len(s["rounds_ms"]) == 5


def test_ratio_is_taken_per_round_so_a_common_slowdown_cancels():
    # Round k is slowed by a factor that hits both implementations alike.
    load = [1.0, 3.0, 1.5, 2.0, 1.0, 4.0, 1.2]
    keras = [10.0 * f for f in load]
    normlab = [2.0 * f for f in load]
    r = stats.ratio_stats(keras, normlab)
    assert r["median"] == pytest.approx(5.0)
    assert r["spread"] == pytest.approx(0.0)
    assert r["decided"]
    # The ratio of the medians would be right here too, but not its spread:
    # each side alone spreads over a factor of 4.
    assert stats.summarize(normlab)["q75_ms"] / stats.summarize(normlab)["q25_ms"] > 1.5


def test_a_wide_spread_is_undecided():
    rng = random.Random(0)
    keras = [10.0] * 20
    normlab = [rng.choice([1.0, 2.0, 4.0]) for _ in range(20)]
    r = stats.ratio_stats(keras, normlab, max_spread=0.3)
    assert r["spread"] > 0.3 and not r["decided"]
    assert stats.format_ratio(r) == "undecided"


def test_too_few_rounds_are_undecided_and_mismatched_rounds_raise():
    assert not stats.ratio_stats([2.0] * 4, [1.0] * 4)["decided"]
    assert stats.ratio_stats([2.0] * 5, [1.0] * 5)["decided"]
    assert stats.ratio_stats([], [])["median"] is None
    with pytest.raises(ValueError):
        stats.ratio_stats([1.0], [1.0, 2.0])


def test_format_ratio():
    assert stats.format_ratio({"median": 4.8, "spread": 0.06, "decided": True}) == "4.80±3%"
    assert stats.format_ratio(None) == "—"
    assert stats.format_ratio({"median": 4.8, "spread": 0.06, "decided": True}, 10) == "   4.80±3%"


def test_summarize_row_keeps_a_number_only_where_decided():
    seconds = {"normlab": [0.002] * 10, "keras": [0.010] * 10, "floor": [0.001, 0.004] * 5,
               "native": [0.001] * 10}
    row = stats.summarize_row(seconds, moved_bytes=2e6)
    assert row["speedup_vs_keras"] == pytest.approx(5.0)
    assert row["normlab_over_native"] == pytest.approx(2.0)
    assert row["keras_over_floor"] is None  # per-round 10 or 2.5: the IQR spans a factor of 4
    assert row["ratios"]["keras_over_floor"]["median"] is not None
    assert "general_over_normlab" not in row  # the general path was not timed
    assert row["normlab"]["GB/s"] == pytest.approx(1.0)


@pytest.mark.parametrize("q25, q75, need, higher, expected", [
    (5.2, 5.6, 5.0, True, "met"),
    (4.2, 4.6, 5.0, True, "missed"),
    (4.8, 5.2, 5.0, True, "undecided"),  # the IQR straddles the target
    (1.0, 1.1, 1.25, False, "met"),
    (1.3, 1.4, 1.25, False, "missed"),
])
def test_decide_on_the_iqr(q25, q75, need, higher, expected):
    s = {"median": (q25 + q75) / 2, "q25": q25, "q75": q75, "rounds": 20, "decided": True}
    assert stats.decide(s, need, higher_is_better=higher) == expected


def test_decide_is_undecided_where_the_ratio_is():
    s = {"median": 10.0, "q25": 3.0, "q75": 300.0, "rounds": 20, "decided": False}
    assert stats.decide(s, 1.25, higher_is_better=False) == "undecided"
    assert stats.decide(None, 1.0) == "undecided"


def test_an_imprecise_median_is_undecided_until_more_rounds_pin_it():
    """A spread of 0.2 is within MAX_SPREAD, but over 25 rounds its median is
    known to about 3.7% only; over 100 rounds, to 1.9%."""

    def ratios(n):  # per-round ratios evenly spread over 1.0 +/- 0.2 (IQR 0.2)
        return [1.0 + 0.4 * (i / (n - 1) - 0.5) for i in range(n)]

    few, many = stats.ratio_stats(ratios(25), [1.0] * 25), stats.ratio_stats(ratios(100), [1.0] * 100)
    assert few["spread"] == pytest.approx(0.2) and few["median_error"] == pytest.approx(0.0372, abs=1e-4)
    assert not few["decided"] and many["decided"]
