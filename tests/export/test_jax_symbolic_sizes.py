"""``jax.export`` with spatial sizes that may be 0 when the program runs.

A valid convolution of a symbolic ``(b, h, w, 3)`` input has spatial sizes
``max(h - 2, 0)``: JAX cannot tell whether they are positive, and any Python
comparison on them raises. Keras' own norms export there; normlab's fast paths
and its sample shift (a slice of size ``min(size, 1)``, which broadcasts
against nothing) raised ``InconclusiveDimensionOperation`` or a broadcasting error.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.export's symbolic sizes")

NORMS = ["layer", "group(groups=4)", "instance", "batch", "rms", "frn", "switchable", "evo_b0"]


def _model(spec: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, normlab.get(spec)(keras.layers.Conv2D(8, 3)(inputs)))


def _symbolic_input():
    import jax

    return jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, h, w, 3"), np.float32)


@pytest.mark.parametrize("spec", NORMS)
def test_inference_exports_with_spatial_sizes_that_may_be_empty(spec):
    import jax

    model = _model(spec)
    exported = jax.export.export(jax.jit(lambda x: model(x, training=False)))(_symbolic_input())
    for shape in [(3, 10, 7, 3), (1, 3, 3, 3)]:
        x = np.random.default_rng(1).normal(0.5, 2.0, shape).astype("float32")
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(np.asarray(exported.call(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["batch", "group(groups=4)", "instance", "layer"])
def test_a_training_step_exports_with_spatial_sizes_that_may_be_empty(spec):
    """Batch statistics and the moving averages' update (which skips a batch with no element) too."""
    import jax

    model = _model(spec)

    def step(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=True)

    weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    specs = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), weights)
    exported = jax.export.export(jax.jit(step))(*specs, _symbolic_input())
    x = np.random.default_rng(1).normal(0.5, 2.0, (3, 10, 7, 3)).astype("float32")
    y, updated = exported.call(*weights, x)
    y_ref, updated_ref = step(*weights, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    for got, ref in zip(updated, updated_ref):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_ghost_batches_of_a_symbolic_batch():
    """A batch declared a multiple of the ghost size (``2*n``) exports and runs; one
    that need not be (``b``) is the op's own error, not a TypeError raised while
    writing it (``b % 2``, an expression, was taken as a remainder)."""
    import jax

    from normlab import ops as nops

    def run(x):
        return nops.ghost_batch_norm(x, 2)

    x = np.random.default_rng(0).normal(size=(6, 4, 8)).astype("float32")
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("2*n, 4, 8"), np.float32)
    exported = jax.export.export(jax.jit(run))(spec)
    np.testing.assert_allclose(np.asarray(exported.call(x)), np.asarray(run(x)), atol=1e-6)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 4, 8"), np.float32)
    with pytest.raises(ValueError, match=r"virtual_batch_size=2 with a symbolic batch size b\. Declare the batch"):
        jax.export.export(jax.jit(run))(spec)
