"""The CPU benchmark behind ``python benchmarks/run.py``, split by responsibility.

* :mod:`.stats`: per-round summaries, ratios with their spread, target
  decisions, the Mann-Whitney rank test (pure Python, no imports beyond the
  standard library).
* :mod:`.machine`: CPU model and flags, thread counts, load, library versions.
* :mod:`.compare`: ``--compare BASE.json``, row by row.
* :mod:`.timing`: interleaved rounds.
* :mod:`.runners`: what is timed on each backend (torch, JAX, TensorFlow).
* :mod:`.work`: deterministic work counts (ops and bytes per call).
* :mod:`.worker`, :mod:`.e2e`: one backend in its own process.
* :mod:`.report`: tables and the performance targets.
* :mod:`.cli`: the driver.

The modules the tests import (``stats``, ``machine``, ``compare``,
``report``) import no deep-learning framework.
"""
