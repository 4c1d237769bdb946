"""``benchmarks/masked.py`` runs on this process's backend (a tiny shape, two rounds: the script, not its times)."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_masked_benchmark_prints_both_passes():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "masked.py"), "--quick", "--rounds", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("fwd")]
    assert [row[0] for row in rows] == ["fwd", "fwd+bwd"], done.stdout
    for row in rows:
        assert min(map(float, row[1:])) > 0, row
