"""``--compare``: rows matched across two results, verdicts, the CPU check, the CLI's exit codes."""

import json
import math
import random

import pytest
from normbench import cli, compare, machine
from normbench.report import targets

from .test_machine import X86_AVX2, X86_AVX512


def _report(seed, normlab_ms, keras_ms=10.0, load=1.0, cpu=X86_AVX512, n=25, work_bytes=7.0, native_ms=None,
            sigma=0.2, own_noise=0.03):
    """A result with one torch row whose rounds are slowed by a per-round load factor
    (log-normal, ``sigma``, and a 3x stall in one round of ten) that hits every
    implementation alike, times each implementation's own noise (``own_noise``)."""
    rng = random.Random(seed)
    factors = [load * math.exp(rng.gauss(0, sigma)) * (3 if rng.random() < 0.1 else 1) for _ in range(n)]

    def impl(ms):
        return {"ms": ms, "rounds_ms": [ms * f * math.exp(rng.gauss(0, own_noise)) for f in factors]}

    row = {"op": "GroupNorm(32)", "shape": [8, 56, 56, 256], "pass": "fwd", "mode": "eager",
           "normlab": impl(normlab_ms), "general": impl(3 * normlab_ms), "keras": impl(keras_ms),
           "work": {"normlab": {"ops": 11, "bytes": int(work_bytes * 100), "bytes_max": int(work_bytes * 100),
                                "bytes_per_input": work_bytes}}}
    if native_ms:
        row["native"] = impl(native_ms)
    return {"command": "test", "machine": {"cpu": machine.parse_cpuinfo(cpu), "versions": {}},
            "backends": {"torch": {"rows": [row]}}}


def _verdicts(result):
    return {row["impl"]: row["verdict"] for row in result["rows"]}


def test_a_slower_normlab_is_slower():
    result = compare.compare_reports(_report(1, 2.0), _report(2, 2.6))
    assert _verdicts(result) == {"normlab": "slower", "general": "slower"}
    row = result["rows"][0]
    assert row["statistic"] == "time/keras"
    assert row["time/keras"]["ratio"] == pytest.approx(1.3, rel=0.05)
    assert result["summary"] == {"slower": 2}


def test_a_loaded_machine_alone_is_within_noise():
    # Every implementation 1.6x slower in the second run: raw times differ, time/keras does not.
    result = compare.compare_reports(_report(1, 2.0), _report(2, 2.0, load=1.6))
    row = result["rows"][0]
    assert row["time"]["verdict"] == "slower"
    assert row["verdict"] == "within noise"
    # On raw times Keras is a control: it moved as much, so the machine drifted.
    quiet = {"sigma": 0.02}
    by_time = compare.compare_reports(_report(1, 2.0, **quiet), _report(2, 2.0, load=1.6, **quiet), by="time")
    row = by_time["rows"][0]
    assert row["time"]["verdict"] == "slower" and row["verdict"].startswith("undecided")
    assert row["controls_moved"][0].startswith("keras slower")


def test_a_moved_control_makes_a_row_undecided():
    result = compare.compare_reports(_report(1, 2.0, native_ms=1.0), _report(2, 2.6, native_ms=1.4))
    row = result["rows"][0]
    assert row["time/keras"]["verdict"] == "slower"
    assert row["verdict"] == "undecided" and row["controls_moved"][0].startswith("native slower x1.")
    assert result["controls"] == {"compared": 1, "moved": 1}
    assert any("the machine drifted" in line for line in compare.format_lines(result))
    steady = compare.compare_reports(_report(1, 2.0, native_ms=1.0), _report(2, 2.6, native_ms=1.0))
    assert steady["rows"][0]["verdict"] == "slower" and steady["controls"]["moved"] == 0


def test_a_wide_spread_is_undecided():
    # Each implementation's own noise (not shared by the round) is wide: no verdict either way.
    result = compare.compare_reports(_report(1, 2.0, own_noise=0.5), _report(2, 2.6, own_noise=0.5))
    assert all(row["noisy"] and row["verdict"] == "undecided" for row in result["rows"])


def test_holm():
    assert compare.holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert compare.holm([0.001, 0.02, 0.04], 0.05) == [True, True, True]
    assert compare.holm([], 0.05) == []


def test_the_same_code_is_within_noise_and_work_is_compared_exactly():
    result = compare.compare_reports(_report(1, 2.0), _report(2, 2.0))
    assert set(_verdicts(result).values()) == {"within noise"}
    assert result["rows"][0]["work"]["same"]
    changed = compare.compare_reports(_report(1, 2.0), _report(2, 2.0, work_bytes=5.0))
    assert not changed["rows"][0]["work"]["same"]
    assert any("WORK CHANGED" in line for line in compare.format_lines(changed))


def test_rows_only_in_one_run_are_listed():
    current = _report(2, 2.0)
    current["backends"]["torch"]["rows"][0]["pass"] = "fwd+bwd"
    result = compare.compare_reports(_report(1, 2.0), current)
    assert result["rows"] == [] and len(result["only_in_base"]) == 1 and len(result["only_in_current"]) == 1


def test_a_base_without_rounds_is_refused():
    old = _report(1, 2.0)
    for impl in ("normlab", "general", "keras"):
        del old["backends"]["torch"]["rows"][0][impl]["rounds_ms"]
    with pytest.raises(ValueError, match="per-round"):
        compare.compare_reports(old, _report(2, 2.0))


def test_different_cpus_warn_loudly():
    result = compare.compare_reports(_report(1, 2.0), _report(2, 2.0, cpu=X86_AVX2))
    assert result["cpu_differences"]
    assert "NOT the same CPU" in "\n".join(compare.format_lines(result))


def test_cli_refuses_other_cpus_and_reports_slower_rows(tmp_path, capsys):
    base, same, other, slow = (tmp_path / f"{n}.json" for n in ("base", "same", "other", "slow"))
    base.write_text(json.dumps(_report(1, 2.0)))
    same.write_text(json.dumps(_report(2, 2.0)))
    other.write_text(json.dumps(_report(2, 2.0, cpu=X86_AVX2)))
    slow.write_text(json.dumps(_report(2, 2.6)))
    assert cli.main(["--compare", str(base), "--against", str(same)]) == 0
    assert cli.main(["--compare", str(base), "--against", str(other)]) == 2
    assert "REFUSED" in capsys.readouterr().out
    assert cli.main(["--compare", str(base), "--against", str(other), "--force-compare"]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert cli.main(["--compare", str(base), "--against", str(slow)]) == 1
    assert "SLOWER" in capsys.readouterr().out


def test_targets_use_the_iqr():
    from normbench import stats

    def row(keras):
        seconds = {"normlab": [0.002] * 10, "keras": keras}
        return {"op": "GroupNorm(32)", "shape": [8, 56, 56, 256], "pass": "fwd+bwd", "mode": "eager",
                **stats.summarize_row(seconds, 1.0)}

    results = {"torch": {"rows": [row([0.012] * 10), row([0.008] * 10), row([0.004, 0.02] * 5)]}}
    assert [status for _, status, _ in targets(results)] == ["met", "missed", "undecided"]
    small = {**row([0.008] * 10), "shape": [2, 8, 8, 64]}  # dispatch, not memory: shown, not a target
    assert [status for _, status, _ in targets({"torch": {"rows": [small, row([0.012] * 10)]}})] == ["met"]
    extra = {**row([0.008] * 10), "targeted": False}  # a shape of the benchmark's own: shown, not a target
    assert [status for _, status, _ in targets({"torch": {"rows": [extra, row([0.012] * 10)]}})] == ["met"]


def test_end_to_end_targets_need_every_round_on_one_side():
    from normbench.report import e2e_decision

    assert e2e_decision([1.0, 1.1, 0.9], [1.2, 1.2, 1.0])[0] == "met"
    assert e2e_decision([1.3, 1.3, 1.1], [1.2, 1.2, 1.0])[0] == "missed"
    assert e2e_decision([1.0, 1.3, 0.9], [1.2, 1.2, 1.0])[0] == "undecided"
    assert e2e_decision([1.0], [2.0])[0] == "undecided"  # --quick: one epoch decides nothing


def test_agreement_covers_ratios_decided_in_both_runs():
    def rows(keras, native, decided_native=True):
        return {("torch", "eager", "GroupNorm(32)", (8, 56, 56, 256), "fwd"): {"ratios": {
            "speedup_vs_keras": {"median": keras, "decided": True},
            "normlab_over_native": {"median": native, "decided": decided_native}}}}

    same = compare.agreement(rows(4.0, 1.5), rows(4.2, 1.52))
    assert same["compared"] == 2 and same["beyond"] == [] and same["max"] == pytest.approx(0.05)
    apart = compare.agreement(rows(4.0, 1.5), rows(4.0, 2.0))
    assert [b[1] for b in apart["beyond"]] == ["normlab_over_native"]
    undecided = compare.agreement(rows(4.0, 1.5), rows(4.0, 2.0, decided_native=False))
    assert undecided["compared"] == 1 and undecided["beyond"] == []


def test_agreement_applies_todays_rule_to_older_results():
    """A ratio an older run called decided by its spread alone (0.25 over 25
    rounds: the median known to 4.6%) no longer counts."""
    old = {("torch", "eager", "LayerNorm(-1)", (64, 512, 768), "fwd"): {"ratios": {
        "speedup_vs_keras": {"median": 1.0, "decided": True, "spread": 0.25, "rounds": 25}}}}
    new = {key: {"ratios": {"speedup_vs_keras": {"median": 1.3, "decided": True, "spread": 0.05, "rounds": 25}}}
           for key in old}
    assert compare.agreement(old, new)["compared"] == 0
