"""Shape helpers of :mod:`normlab.ops.axes`: statistics spread along short trailing rows."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from normlab.ops.axes import SHORT_ROW, along_short_rows


@pytest.mark.parametrize("shape, axes, spread", [
    ((2, 6, 6, 4, 2), [1, 2, 4], (2, 1, 1, 4, 2)),   # channels-last group norm: over each group's channels
    ((2, 6, 6, 16, 8), [1, 2, 4], (2, 1, 1, 16, 8)),
    ((32, 8, 3, 3), [0, 2, 3], (1, 8, 3, 3)),         # channels-first batch norm, small images, 32 samples
    ((4, 8, 3, 3), [0, 2, 3], None),                  # ... 4 samples: the spread one would be a quarter of x
    ((2, 5, 16), [2], None),                          # layer norm: no reduced axis ahead of the statistics
    ((2, 6, 6, 3), [1, 2, 3], None),                  # over everything but the batch: one value per sample
    ((2, 6, 6, 8), [1, 2], None),                     # channels-last instance norm: the last axis is kept
    ((2, 4, 4, 2, SHORT_ROW), [1, 2, 4], None),       # rows long enough
    ((2, 6, 6, 1, 2), [1, 2, 4], None),               # one group: nothing varies ahead of the row
])
def test_statistics_are_spread_along_short_rows_only(shape, axes, spread):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    stat = np.sum(x, axis=tuple(axes), keepdims=True)
    out = ops.convert_to_numpy(along_short_rows(ops.convert_to_tensor(stat), ops.convert_to_tensor(x), axes))
    assert out.shape == (spread or stat.shape)
    np.testing.assert_array_equal(out, np.broadcast_to(stat, out.shape))  # the same values
