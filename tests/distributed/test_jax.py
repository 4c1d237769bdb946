"""Synchronized statistics on JAX with two host CPU devices.

One worker process (XLA_FLAGS must be set before JAX starts) runs every
check: ``shard_map`` and ``pmap`` under ``normlab.distributed.axis_name``,
``keras.distribution.DataParallel`` (sharded jit, where XLA computes
the global statistics itself), and JAX's explicit sharding (the batch split
in the arrays' types, where slicing one sample is a type error). See ``_jax_worker.py`` and ``_cases.py``.
"""

import keras
import pytest

from tests.distributed import _run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs in the JAX backend's test process")]

LAYERS = ["batch_norm", "batch_norm_mask", "all_padding", "ghost_all_padding", "batch_norm_channels_first", "renorm", "ghost", "renorm_ghost",
          "evo_norm_b0", "switchable"]
CASES = [f"{name}/sync" for name in LAYERS] + [
    "batch_norm/local", "ghost/local", "batch_norm/sync/pmap", "renorm_ghost/sync/pmap",
    "float64_reference", "data_parallel", "data_parallel_fit",
] + [f"{name}/explicit" for name in LAYERS + ["group_norm", "group_norm_channels_first", "instance_norm",
                                               "layer_norm", "layer_norm_all", "rms_norm"]] + ["ghost/explicit/gathered", "batch_norm_mask_long/explicit"] + [
    f"{name}/explicit/split_weights"
    for name in ["layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "ghost"]] + [
    "spectral_norm/explicit/split_kernel"]


@pytest.fixture(scope="module")
def results():
    return _run.run_worker("tests.distributed._jax_worker", "jax")


@pytest.mark.parametrize("case", CASES)
def test_two_devices(results, case):
    _run.check(*results, case)
