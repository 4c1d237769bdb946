"""Synchronized statistics under torch.distributed with the gloo backend: two CPU processes.

Two worker processes (ranks) on 127.0.0.1 run every check, each on its own
slice of the global batch; see ``_torch_worker.py`` and ``_cases.py``.
"""

import keras
import pytest

from tests.distributed import _cases, _run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(keras.backend.backend() != "torch", reason="runs in the torch backend's test process")]

LAYERS = ["batch_norm", "batch_norm_mask", "all_padding", "ghost_all_padding", "batch_norm_channels_first", "renorm", "ghost", "renorm_ghost",
          "evo_norm_b0", "switchable"]
CASES = [f"{name}/sync" for name in LAYERS] + ["batch_norm/local", "renorm/local", "float64_reference",
                                               "training_step"] + [
    f"{name}/empty_replica" for name in _cases.EMPTY_REPLICA] + [f"{name}/compiled" for name in _cases.COMPILED]


@pytest.fixture(scope="module")
def results():
    return _run.run_ranks("tests.distributed._torch_worker", "torch", world=2)


@pytest.mark.parametrize("case", CASES)
def test_gloo_two_processes(results, case):
    _run.check(*results, case)
