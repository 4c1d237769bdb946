"""``benchmarks/runtimes.py`` runs on this process's backend (small shapes, two
rounds: the script and what it reports, not its times)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runtimes.py"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_runtimes_benchmark_times_and_checks_each_export(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "rows.json"
    done = _run("--quick", "--rounds", "2", "--cases", "GN,BN", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert {(row["case"], row["runtime"]) for row in rows} >= {("GN", "onnxruntime"), ("BN", "onnxruntime")}
    for row in rows:
        assert row["us"]["normlab"] > 0, row
        assert float(row["error"]["normlab"]) < 1e-5, row  # normlab's export: exact at an offset of 1e4
        assert f"{row['case']} " in done.stdout


def test_an_unknown_case_is_refused_by_name(capsys):
    spec = importlib.util.spec_from_file_location("runtimes_under_test", ROOT / "benchmarks" / "runtimes.py")
    runtimes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtimes)
    with pytest.raises(SystemExit) as exited:
        runtimes.main(["--cases", "GN,XN"])
    assert exited.value.code == 2 and "unknown XN" in capsys.readouterr().err
    # spaces after commas are allowed; nothing at all, or no round, measures nothing (exit 0 before)
    for argv, named in ((["--cases", ""], "--cases '': unknown (none given)"),
                        (["--rounds", "0"], "--rounds: expected an integer >= 1, got '0'"),
                        (["--rounds", "-1"], "got '-1'")):
        with pytest.raises(SystemExit) as exited:
            runtimes.main(argv)
        assert exited.value.code == 2 and named in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runtimes.main(["--cases", "GN, XN"])
    assert "unknown XN;" in capsys.readouterr().err
