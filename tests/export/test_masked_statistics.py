"""Masked statistics in an exported model: batch norm's training form and
per-sample moments with a mask computed from the data, exported every way
the backend offers (``_formats.ROUTES``), match eager within 1e-5.

A deployed model computes masked statistics where it normalizes over the
valid positions of its own input (per-sample moments over a padded
sequence, say); the export matrix's layers run their inference form, which
reads no mask. The masked shift (``normlab.ops.samples.kept_samples``) is
exported in both its forms: selected by a sum, and gathered (which inputs
this small take only when the threshold is lowered).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab
from normlab.ops import samples as samples_module
from tests.export import _cases, _formats, _known

BACKEND = keras.backend.backend()
ROUTES_HERE = [route.id for route in _formats.ROUTES if BACKEND in route.backends]


class MaskedStatistics(keras.layers.Layer):
    """Batch norm over the positions whose first channel is positive, beside
    each sample normalized by its own masked moments."""

    def call(self, h):
        mask = keras.ops.expand_dims(h[..., 0] > 0.0, -1)
        batch = normlab.ops.batch_norm(h, training=True, mask=mask)
        mean, variance = normlab.ops.moments(h, [1, 2], mask=mask)
        return keras.ops.concatenate([batch, (h - mean) * keras.ops.rsqrt(variance + 1e-3)], axis=-1)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(_cases.INPUT_SHAPE)
    h = MaskedStatistics()(keras.layers.Conv2D(_cases.CHANNELS, 3)(inputs))
    return keras.Model(inputs, keras.layers.Flatten()(h))


@pytest.mark.slow
@pytest.mark.parametrize("shift", ["summed", "gathered"])
@pytest.mark.parametrize("route_id", ROUTES_HERE)
def test_masked_statistics_export(route_id, shift, tmp_path, monkeypatch):
    route = _formats.BY_ID[route_id]
    route.require()
    failure = _known.route_failure(BACKEND, route_id)
    if failure is not None:
        pytest.skip(f"the route fails for any model here: {failure.reason()}")
    if shift == "gathered":
        monkeypatch.setattr(samples_module, "GATHER_MIN_ELEMENTS", 0)
    model, x = _model(), _cases.inputs()
    expected = np.asarray(keras.ops.convert_to_numpy(model(x)))
    got = route.run(model, x, str(tmp_path))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
