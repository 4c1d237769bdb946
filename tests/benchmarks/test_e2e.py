"""The end-to-end CNN's timed epochs include no compilation (JAX's compile log)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab
from tests.backends.test_jax_eager import _compilations


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX logs its compilations")
def test_a_timed_epoch_with_a_final_partial_batch_compiles_nothing():
    from normbench.e2e import BATCH, warmed_model

    rng = np.random.default_rng(0)
    x = rng.random((2 * BATCH + 6, 784), dtype=np.float32)  # a final batch of 6 images
    y = rng.integers(0, 10, len(x)).astype("int32")
    model = warmed_model(keras, lambda: normlab.layers.GroupNormalization(groups=5), x, y)
    compiled = _compilations(lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0) and None)
    assert compiled == []
