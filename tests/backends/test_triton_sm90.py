"""The Triton kernels compiled for an H100/H200 (sm_90) on a machine without
a GPU (``tests/backends/_triton_aot.py``): every kernel the torch hooks
launch, as they launch it, for the benchmark's shapes and each block
strategy's extremes, in float32, bfloat16 and float16, with and without
``gamma``/``beta`` and the input gradient. Triton's interpreter (which
``test_triton.py`` runs) checks what the kernels compute; this checks that
the GPU compiler takes them and what they cost in registers and shared
memory, before any GPU time is spent.

Register spills are pinned, not only bounded: the layer/RMS-norm backward
of rows of 16384 lanes spills (it holds two accumulators and a tile of
``x`` and ``dy`` per thread), a known cost to measure on a GPU; nothing
else may spill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the kernels' compiler takes torch dtypes")

from tests.backends._triton_aot import UNAVAILABLE  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.triton, pytest.mark.once, pytest.mark.slow]

#: Registers per multiprocessor on sm_90, and the shared memory a block may use.
REGISTER_FILE = 65536
MAX_SHARED = 227 * 1024

#: The launches allowed to spill (kernel, BLOCK_W), and at most how many bytes a thread.
SPILLS_ALLOWED = {("backward", 16384): 512}


@pytest.fixture(scope="module")
def report():
    """The compile report, from a subprocess: it imports triton, which must
    not happen in a process that has imported TensorFlow (see
    ``normlab.backends.triton.runtime.load_triton``), nor where this run set
    ``TRITON_INTERPRET``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(KERAS_BACKEND="torch", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", "tests.backends._triton_aot", "--arch", "90"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode == UNAVAILABLE:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_every_kernel_compiles_for_sm90(report):
    compiled = {launch["kernel"] for launch in report["launches"]}
    assert compiled == set(report["kernels"]), set(report["kernels"]) - compiled
    kinds = {(launch["kernel"], tuple(launch["types"])) for launch in report["launches"]}
    for dtype in ("*fp32", "*bf16", "*fp16"):
        assert any(dtype in types for _, types in kinds), dtype


def test_registers_and_shared_memory_fit_a_multiprocessor(report):
    for launch in report["launches"]:
        threads = 32 * launch["num_warps"]
        assert launch["registers"] * threads <= REGISTER_FILE, launch
        assert launch["shared"] <= MAX_SHARED, launch


def test_only_the_widest_row_backward_spills(report):
    for launch in report["launches"]:
        allowed = SPILLS_ALLOWED.get((launch["kernel"], launch["constants"].get("BLOCK_W")), 0)
        assert launch["spill_stores"] <= allowed and launch["spill_loads"] <= allowed, launch
