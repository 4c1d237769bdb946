"""The benchmark driver's arguments: bad values are refused with the argument named,
and a failed or empty run leaves the results file as it was."""

from __future__ import annotations

import json

import pytest
from normbench import cli, compare

from .test_compare import _report


@pytest.mark.parametrize("argv, named", [
    (["--rounds", "0"], "--rounds 0"),
    (["--rounds", "-3"], "--rounds -3"),
    (["--backends", "torhc"], "--backends 'torhc'"),
    (["--passes", "bwd"], "--passes 'bwd'"),
    (["--rows", "GroupNorm("], "--rows 'GroupNorm('"),
    (["--threads", "0"], "--threads 0"),
    (["--sweeps", "0"], "--sweeps 0"),
    (["--max-spread", "0"], "--max-spread 0.0"),
    (["--alpha", "1.5"], "--alpha 1.5"),
    # (a missing file was opened only after the whole run: a traceback, and no results written)
    (["--compare", "/nonexistent/base.json"], "--compare /nonexistent/base.json: no such file"),
    (["--compare", "/nonexistent/base.json", "--against", "/nonexistent/new.json"], "no such file"),
    # (found only after each backend started, with an empty table "over None interleaved rounds")
    (["--rows", "zzz"], "--rows 'zzz' --passes None: no row of this run matches; the rows are "),
    (["--quick", "--rows", "LayerNorm\\(-1\\) \\(64"], "no row of this run matches"),
])
def test_bad_arguments_are_refused_by_name(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_good_arguments_pass():
    args = cli.parse_args(["--backends", "torch,jax", "--passes", "fwd,fwd+bwd", "--rows", "Group|Layer",
                           "--rounds", "3", "--threads", "1"])
    assert (args.rounds, args.threads) == (3, 1)


@pytest.mark.parametrize("worker_result", [None, {"backend": "torch", "rows": [], "e2e": [], "roofline": {}}])
def test_a_failed_or_empty_run_leaves_the_results_file_alone(worker_result, tmp_path, monkeypatch, capsys):
    out = tmp_path / "latest.json"
    out.write_text('{"kept": true}')
    monkeypatch.setattr(cli, "_run_backend", lambda backend, config: worker_result)
    assert cli.main(["--backends", "torch", "--no-e2e", "--json", str(out)]) == 1
    assert json.loads(out.read_text()) == {"kept": True}
    assert "not written" in capsys.readouterr().err


def test_a_run_with_a_failed_backend_keeps_the_others_beside_the_results_file(tmp_path, monkeypatch, capsys):
    """The backends that ran are compared and written to ``latest.partial.json``;
    ``latest.json`` (a complete run) is left alone and the exit code says it failed."""
    out, base = tmp_path / "latest.json", tmp_path / "base.json"
    out.write_text('{"kept": true}')
    base.write_text(json.dumps(_report(1, 2.0)))
    ran = _report(2, 2.0)["backends"]["torch"]
    monkeypatch.setattr(cli, "_run_backend", lambda backend, config: dict(ran) if backend == "torch" else None)
    monkeypatch.setattr(cli, "print_table", lambda result: None)  # the tables and targets are tested elsewhere
    monkeypatch.setattr(cli, "targets", lambda results: [])
    code = cli.main(["--backends", "torch,jax", "--no-e2e", "--json", str(out), "--compare", str(base),
                     "--force-compare"])
    assert code == 1
    assert json.loads(out.read_text()) == {"kept": True}
    partial = json.loads((tmp_path / "latest.partial.json").read_text())
    assert partial["failed"] == ["jax"] and list(partial["backends"]) == ["torch"]
    assert partial["comparison"]["rows"]
    captured = capsys.readouterr()
    assert "compare with" in captured.out and "jax failed" in captured.err


def test_compare_applies_max_spread(tmp_path, capsys):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(_report(1, 2.0, sigma=0.6)))
    new.write_text(json.dumps(_report(2, 2.0, sigma=0.6)))
    cli.main(["--compare", str(base), "--against", str(new), "--max-spread", "100"])
    out = capsys.readouterr().out
    assert "within 100" in out and "spread too wide" not in out


def test_different_thread_settings_are_noted():
    base, new = _report(1, 2.0), _report(2, 2.0)
    base["config"], new["config"] = {"threads": None}, {"threads": 1}
    base["backends"]["torch"]["threads"] = {"torch intra-op": 2}
    new["backends"]["torch"]["threads"] = {"torch intra-op": 1}
    lines = compare.compare_reports(base, new)["other_differences"]
    assert "--threads: default vs 1" in lines and "torch torch intra-op: 2 vs 1" in lines


@pytest.mark.once
@pytest.mark.parametrize("script", ["masked.py", "cpu_half.py"])
@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_the_other_benchmarks_refuse_rounds_below_one(script, rounds, capsys):
    """``--rounds 0`` was the default in disguise, ``-1`` a traceback ("quantile of no values")."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / script
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exited:
        module.main(["--rounds", rounds])
    assert exited.value.code == 2
    assert f"--rounds: expected an integer >= 1, got '{rounds}'" in capsys.readouterr().err
