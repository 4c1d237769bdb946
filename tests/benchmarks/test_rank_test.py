"""The Mann-Whitney rank test and the two-run verdict on synthetic rounds."""

import math
import random

import pytest
from normbench import stats


def _rounds(seed, n, center, spread=0.1, spikes=0.15):
    """Per-round times of a loaded machine: log-normal noise plus occasional 2-4x stalls."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = center * math.exp(rng.gauss(0, spread))
        if rng.random() < spikes:
            t *= rng.uniform(2, 4)
        out.append(t)
    return out


def test_u_statistic_on_a_hand_example():
    # x entirely above y: U_x = n1 * n2.
    r = stats.mann_whitney([4, 5, 6], [1, 2, 3])
    # z = (9 - 4.5 - 0.5) / sqrt(3 * 3 * 7 / 12), p = erfc(z / sqrt(2)).
    assert r["u"] == 9 and r["p"] == pytest.approx(math.erfc(4 / math.sqrt(63 / 12) / math.sqrt(2)))
    r = stats.mann_whitney([1, 2, 3], [4, 5, 6])
    assert r["u"] == 0 and r["p"] == pytest.approx(0.0809, abs=1e-4)
    # All tied: no evidence at all.
    assert stats.mann_whitney([1, 1, 1], [1, 1]) == {"u": 3.0, "p": 1.0}
    with pytest.raises(ValueError):
        stats.mann_whitney([], [1])


def test_hodges_lehmann_ratio():
    assert stats.hodges_lehmann_ratio([1.0, 2.0], [1.5, 3.0]) == pytest.approx(1.5)


def test_a_real_slowdown_is_slower():
    base = _rounds(1, 25, 10.0)
    current = _rounds(2, 25, 12.0)
    r = stats.compare_samples(base, current)
    assert r["verdict"] == "slower" and r["p"] < 0.01
    assert r["ratio"] == pytest.approx(1.2, rel=0.1)
    assert stats.compare_samples(current, base)["verdict"] == "faster"


def test_the_same_code_is_within_noise():
    for seed in range(10):
        r = stats.compare_samples(_rounds(seed, 25, 10.0), _rounds(seed + 100, 25, 10.0))
        assert r["verdict"] == "within noise", (seed, r)


def test_a_significant_but_tiny_shift_is_within_noise():
    base = [10.0 + 0.001 * i for i in range(30)]
    current = [v * 1.02 for v in base]
    r = stats.compare_samples(base, current, alpha=0.5, min_effect=0.05)
    assert r["p"] < 0.5 and r["verdict"] == "within noise"


def test_too_few_rounds():
    r = stats.compare_samples([1.0, 2.0], [3.0, 4.0])
    assert r["verdict"] == "too few rounds" and r["p"] is None
