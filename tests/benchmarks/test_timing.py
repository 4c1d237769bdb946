"""Interleaved rounds and sweeps, on trivial Python functions (no time is asserted)."""

from normbench.timing import time_rounds
from normbench.worker import _sweeps, select_cases


def _recorder(log, name):
    def fn():
        log.append(name)

    return fn


def test_rounds_rotate_and_a_failing_function_is_reported():
    log = []

    def broken():
        raise RuntimeError("no such op")

    fns = {"a": _recorder(log, "a"), "b": _recorder(log, "b"), "c": _recorder(log, "c"), "x": broken}
    samples, calls, preempted = time_rounds(fns, rounds=3, warmup=1)
    assert isinstance(samples["x"], RuntimeError)
    assert [len(samples[k]) for k in "abc"] == [3, 3, 3]
    assert calls == {"a": 1, "b": 1, "c": 1}
    assert set(preempted) == {"a", "b", "c"}
    assert log[3:] == list("abc" "bca" "cab")  # after one warm-up call each


def test_short_calls_are_repeated_within_a_sample():
    log = []
    samples, calls, _ = time_rounds({"a": _recorder(log, "a")}, rounds=2, warmup=1, min_sample_s=1e-3)
    assert calls["a"] > 1 and len(log) == 1 + 2 * calls["a"] and len(samples["a"]) == 2


def test_sweeps_spread_each_rows_rounds_over_the_run():
    log = []
    cells = []
    for row in ("r1", "r2"):
        impls = {s: (None, _recorder(log, f"{row}.{s}"), None) for s in ("normlab", "keras")}
        cells.append((row, (1,), "fwd", None, impls, 4))
    out = _sweeps(cells, {"sweeps": 3}, rounds=7, warmup=1, min_sample_s=0.0)
    assert [len(seconds["normlab"]) for seconds, _, _ in out] == [7, 7]
    rows_in_order = [name.split(".")[0] for name in log]
    # r1 and r2 alternate sweep by sweep (3, 2 and 2 rounds), each sweep starting with untimed calls.
    changes = sum(1 for a, b in zip(rows_in_order, rows_in_order[1:]) if a != b)
    assert changes == 5


def test_select_cases():
    assert [c[0] for c in select_cases(True, rows="norm", passes=["fwd"])] == [
        "GroupNorm(32)", "InstanceNorm", "LayerNorm(-1)", "RMSNorm(-1)", "BatchNorm(train)", "BatchNorm(infer)",
        "GroupNorm(32)", "BatchNorm(train)", "LayerNorm(-1)"]  # the last three: the small and wide rows
    assert [c[2] for c in select_cases(True, rows="8, 8, 64")] == [(2, 8, 8, 64)] * 2
    assert [c[1] for c in select_cases(True, rows=r"BatchNorm\(infer")] == ["batch_infer"]
    cases = select_cases(False, rows="GroupNorm.*28, 28", passes=["fwd+bwd"])
    assert cases == [("GroupNorm(32)", "group", (32, 28, 28, 64), ("fwd+bwd",))]


def test_end_to_end_rounds_rotate_so_each_model_runs_first_once():
    from normbench.e2e import E2E_EPOCHS, rotated

    models = ["normlab GN", "keras GN", "normlab BN", "keras BN"]
    orders = [rotated(models, r) for r in range(E2E_EPOCHS)]
    assert all(sorted(order) == sorted(models) for order in orders)
    assert sorted(order[0] for order in orders) == sorted(models)
    assert rotated(models, 0) == models and rotated(models, 1)[0] == "keras GN"
