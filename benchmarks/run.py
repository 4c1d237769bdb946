"""normlab benchmark suite: one command, every backend side by side.

    python benchmarks/run.py                      # all backends, full shapes, end-to-end
    python benchmarks/run.py --quick              # smaller shapes, fewer rounds
    python benchmarks/run.py --backends torch --no-e2e --rows GroupNorm
    python benchmarks/run.py --compare BASE.json  # faster / slower / within noise, per row

The code lives in the ``normlab``-independent package ``benchmarks/normbench``
(see its ``__init__``); this file is the entry point, and also what each
backend's worker subprocess runs. ``--help`` lists the flags,
``benchmarks/README.md`` explains the columns and the statistics.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from normbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
