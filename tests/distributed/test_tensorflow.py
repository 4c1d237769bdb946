"""Synchronized statistics under tf.distribute.MirroredStrategy, two logical CPU devices.

One worker process (logical devices must be set before TensorFlow starts)
runs every check; see ``_tensorflow_worker.py`` and ``_cases.py``.
"""

import keras
import pytest

from tests.distributed import _cases, _run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="runs in the TensorFlow backend's test process"
)]

LAYERS = ["batch_norm", "batch_norm_mask", "all_padding", "ghost_all_padding", "batch_norm_channels_first", "renorm", "ghost", "renorm_ghost",
          "evo_norm_b0", "switchable"]
CASES = [f"{name}/sync" for name in LAYERS] + ["batch_norm/local", "renorm/local", "float64_reference", "fit",
                                               "fit_partial_batch", "fit_partial_batch_local", "weight_norm_init/first_call",
                                               "weight_norm_init/fit"] + [
    f"{name}/empty_replica" for name in _cases.EMPTY_REPLICA]


@pytest.fixture(scope="module")
def results():
    return _run.run_worker("tests.distributed._tensorflow_worker", "tensorflow")


@pytest.mark.parametrize("case", CASES)
def test_mirrored_strategy(results, case):
    _run.check(*results, case)
