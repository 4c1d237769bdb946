"""``benchmarks/cpu_half.py`` runs (tiny shapes, two rounds: the script, not its times)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "torch", reason="a torch benchmark: run in the torch process")
def test_cpu_half_benchmark_prints_every_row():
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_half.py"), "--quick", "--rounds", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if " fwd" in line]
    assert len(rows) == 3 * 3 * 2, done.stdout  # ops x dtypes x passes
    for row in rows:
        kernels, before, native, *ratios = map(float, row[-5:])
        assert min(kernels, before, native, *ratios) > 0, row
