"""The benchmark's pure logic (``benchmarks/normbench``), importable as ``normbench``.

Only the framework-free modules are imported here (stats, machine, compare,
report, work's HLO parser); nothing is timed.
"""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
