"""Which formulation TensorFlow's fast paths build
(:mod:`normlab.backends.tensorflow_stats`): outside XLA, a training step's
inputs of at most ``SUBSAMPLE_ELEMENTS`` are taken about a subsample mean with
no ``tf.cond``, and so are the inputs of graphs that differentiate nothing
(``predict``, exporters), whatever their size (layer norm declines there:
the general path); larger training inputs and everything under XLA keep the
conditional statistics. The
fused batch-norm kernel serves only inputs of ``FUSED_MIN_ELEMENTS`` or more.
An unknown batch size counts as ``UNKNOWN_BATCH``. Their numerics are checked
with both formulations in ``test_fast_paths.py``."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normlab

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow hooks")


def _op_types(layer, shape, jit_compile=False, train=True, **call):
    """Op types of a ``tf.function`` (forward and backward, or with ``train=False``
    the forward alone) of ``layer`` on ``shape`` (``None`` first: an unknown
    batch size), the functions it calls included."""
    import tensorflow as tf

    layer.build((2, *shape[1:]))

    def step(x):
        if not train:
            return layer(x, **call)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, **call)
        return tape.gradient(y, [x, *layer.trainable_weights])

    fn = tf.function(step, jit_compile=jit_compile)
    graph = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types |= {node.op for node in function.node_def}
    return types


LAYERS = {
    "group": lambda: normlab.layers.GroupNormalization(groups=4),
    "layer": lambda: normlab.layers.LayerNormalization(),
    "batch": lambda: normlab.layers.BatchNormalization(),
}
CALL = {"batch": {"training": True}}
CONDS = {"If", "StatelessIf"}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_small_inputs_decide_nothing_outside_xla(kind):
    # (8, 8, 8, 12): 6,144 elements; 12 channels keep batch norm off the fused kernel.
    assert not _op_types(LAYERS[kind](), (8, 8, 8, 12), **CALL.get(kind, {})) & CONDS


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_larger_inputs_and_xla_keep_the_conditional_statistics(kind, monkeypatch):
    from normlab.backends import tensorflow_stats

    assert _op_types(LAYERS[kind](), (8, 8, 8, 12), jit_compile=True, **CALL.get(kind, {})) & CONDS
    assert _op_types(LAYERS[kind](), (8, 8, 8, 12), jit_compile=True, train=False, **CALL.get(kind, {})) & CONDS
    monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", 8 * 8 * 8 * 12 - 1)
    assert _op_types(LAYERS[kind](), (8, 8, 8, 12), **CALL.get(kind, {})) & CONDS


INFERENCE_LAYERS = {**LAYERS, "instance": lambda: normlab.layers.InstanceNormalization()}


@pytest.mark.parametrize("kind", sorted(INFERENCE_LAYERS))
def test_graphs_that_differentiate_nothing_decide_nothing_at_any_size(kind, monkeypatch):
    """Full-integer LiteRT quantization calibrates a ``cond``'s branches only
    where the float model ran them (tests/export/test_quantization.py)."""
    from normlab.backends import tensorflow_stats

    monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", 0)
    for shape in [(8, 8, 8, 12), (None, 8, 8, 12)]:
        assert not _op_types(INFERENCE_LAYERS[kind](), shape, train=False, **CALL.get(kind, {})) & CONDS


@pytest.mark.parametrize("kind", ["group", "instance"])
def test_graphs_that_differentiate_nothing_keep_the_hook(kind):
    """Group and instance norm keep the hook there, about a subsample mean
    (group norm's ``predict`` graph 2.7x faster than Keras' layer's at
    ``(8, 56, 56, 256)``): its graph has no ``Minimum``, which the general
    path's median sample takes."""
    assert "Minimum" not in _op_types(INFERENCE_LAYERS[kind](), (8, 8, 8, 12), train=False)
    with normlab.backends.disabled():
        assert "Minimum" in _op_types(INFERENCE_LAYERS[kind](), (8, 8, 8, 12), train=False)


@pytest.mark.parametrize("kind", sorted(INFERENCE_LAYERS))
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_graphs_that_differentiate_nothing_match_the_general_path(kind, offset):
    """Outputs of a ``tf.function`` forward (an unknown batch, as ``predict``
    traces it) against the general path's, the first position of each sample
    an outlier."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = offset + rng.normal(0.5, 2.0, size=(6, 5, 7, 12))
    x[:, 0, 0, :] += 1e3
    x = tf.constant(x, tf.float32)
    layer = INFERENCE_LAYERS[kind]()
    layer.build(x.shape)
    fn = tf.function(lambda t: layer(t, **CALL.get(kind, {})),
                     input_signature=[tf.TensorSpec((None, 5, 7, 12), tf.float32)])
    got = fn(x).numpy()
    with normlab.backends.disabled():
        expected = fn.python_function(x).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_an_unknown_batch_counts_as_keras_default_batch_size(monkeypatch):
    from normlab.backends import tensorflow_stats

    per_sample = 8 * 8 * 12
    monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", per_sample * tensorflow_stats.UNKNOWN_BATCH)
    assert not _op_types(LAYERS["group"](), (None, 8, 8, 12)) & CONDS
    monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", per_sample * tensorflow_stats.UNKNOWN_BATCH - 1)
    assert _op_types(LAYERS["group"](), (None, 8, 8, 12)) & CONDS


@pytest.mark.parametrize("batch,fused", [(8, False), (16, True)])
def test_fused_kernels_serve_only_inputs_large_enough(batch, fused, monkeypatch):
    from normlab.backends import tensorflow_stats

    monkeypatch.setattr(tensorflow_stats, "FUSED_MIN_ELEMENTS", 16 * 8 * 8 * 16)
    shape = (batch, 8, 8, 16)  # 16 channels: a whole number of the fused kernel's channel blocks
    bn = _op_types(normlab.layers.BatchNormalization(), shape, training=True)
    ln = _op_types(normlab.layers.LayerNormalization(), shape)
    assert ("FusedBatchNormV3" in bn) is fused
    assert ("FusedBatchNormV3" in ln) is fused
    unknown = _op_types(normlab.layers.BatchNormalization(), (None, 8, 8, 16), training=True)
    assert ("FusedBatchNormV3" in unknown) is (tensorflow_stats.UNKNOWN_BATCH >= 16)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_both_formulations_give_the_same_training_step(kind, offset, monkeypatch):
    """A layer's output and gradients in a ``tf.function`` (an unknown batch,
    as ``fit`` traces it), against the general path: about the subsample
    mean, then with the conditional statistics (the first position of each
    sample an outlier)."""
    import tensorflow as tf

    from normlab.backends import tensorflow_stats

    rng = np.random.default_rng(0)
    x = offset + rng.normal(0.5, 2.0, size=(6, 5, 7, 12))
    x[:, 0, 0, :] += 1e3
    x = tf.constant(x, tf.float32)
    dy = tf.constant(rng.normal(size=x.shape), tf.float32)
    results = []
    for limit in (tensorflow_stats.SUBSAMPLE_ELEMENTS, 0, None):
        if limit is not None:
            monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", limit)
        layer = LAYERS[kind]()
        layer.build(x.shape)

        def step(t, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = layer(t, **CALL.get(kind, {}))
            return [y, *tape.gradient(y, [t, *layer.trainable_weights], output_gradients=dy)]

        fn = tf.function(step, input_signature=[tf.TensorSpec((None, 5, 7, 12), tf.float32)])
        if limit is None:
            with normlab.backends.disabled():
                results.append([t.numpy() for t in fn(x)])
        else:
            results.append([t.numpy() for t in fn(x)])
    subsample, conditional, general = results
    for got in (subsample, conditional):
        for a, b in zip(got, general):
            np.testing.assert_allclose(a, b, atol=2e-5 * max(1.0, np.abs(b).max()))


EMPTY_LAYERS = {
    "layer": lambda: normlab.layers.LayerNormalization(),
    "group": lambda: normlab.layers.GroupNormalization(groups=3),
    "instance": lambda: normlab.layers.InstanceNormalization(),
    "batch": lambda: normlab.layers.BatchNormalization(),
}


@pytest.mark.parametrize("kind,shape", [
    ("layer", (None, 3, 0)), ("layer", (None, 0, 6)),
    *((kind, shape) for kind in ("group", "instance", "batch") for shape in ((None, 0, 6), (None, 3, 0, 6))),
])
def test_an_empty_axis_with_an_unknown_batch_is_traced_and_run(kind, shape):
    # The fast paths decline empty inputs whatever the batch; group norm's
    # first-element sample once failed at run time on an empty spatial axis.
    import tensorflow as tf

    layer = EMPTY_LAYERS[kind]()
    layer.build((2, *shape[1:]))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return y, tape.gradient(y, x)

    y, dx = tf.function(step, input_signature=[tf.TensorSpec(shape, tf.float32)])(tf.zeros((2, *shape[1:])))
    assert tuple(y.shape) == (2, *shape[1:]) and tuple(dx.shape) == (2, *shape[1:])


def test_rms_norm_graphs_that_differentiate_nothing_take_the_general_path():
    """TensorFlow's RMS norm hook serves eager calls, XLA and graphs a tape records
    (a training step); in other graphs (``predict``, an exporter's trace) its rows'
    reshapes cost LiteRT a copy each way."""
    import tensorflow as tf

    from normlab.backends import tensorflow_layer_norm as hooks

    served = {}

    def probe(where, tape=False):
        def call(t):
            with tf.GradientTape() as recording:
                if tape:
                    recording.watch(t)
                served[where] = hooks.rms_norm(t, axes=[2], gamma=None, beta=None, epsilon=1e-6) is not None
            return t
        return call

    x = tf.ones((2, 3, 8))
    probe("eager")(x)
    tf.function(probe("graph"))(x)
    tf.function(probe("graph, recorded", tape=True))(x)
    tf.function(probe("xla"), jit_compile=True)(x)
    assert served == {"eager": True, "graph": False, "graph, recorded": True, "xla": True}


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("kind", sorted(EMPTY_LAYERS))
def test_an_unknown_batch_that_is_empty_at_run_time(kind, jit_compile):
    """A graph traced for an unknown batch (the hooks serve it) and run on an
    empty one: forward only, where the conditional statistics and their
    first-element samples run (batch norm's samples are padded along the
    unknown batch axis), as the general path's NaN statistics and empty output."""
    import tensorflow as tf

    layer = EMPTY_LAYERS[kind]()
    layer.build((2, 5, 12))
    fn = tf.function(lambda x: layer(x, training=True), jit_compile=jit_compile,
                     input_signature=[tf.TensorSpec((None, 5, 12), tf.float32)])
    assert tuple(fn(tf.zeros((0, 5, 12))).shape) == (0, 5, 12)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 12)).astype("float32")
    with normlab.backends.disabled():
        want = layer(x, training=True).numpy()
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), want, atol=2e-5)


@pytest.mark.parametrize("kind", sorted(EMPTY_LAYERS))
def test_an_unknown_size_besides_the_batch_takes_the_general_path(kind):
    """A sequence length unknown when traced (``(None, None, C)``): the hooks,
    whose views and counts need every size but the batch's, decline it."""
    import tensorflow as tf

    layer = EMPTY_LAYERS[kind]()
    layer.build((2, 5, 12))
    fn = tf.function(lambda x: layer(x, training=True), input_signature=[tf.TensorSpec((None, None, 12), tf.float32)])
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 5, 12)).astype("float32")
    with normlab.backends.disabled():
        want = layer(x, training=True).numpy()
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), want, atol=2e-5)


@pytest.mark.parametrize("kind,axis", [("group", -1), ("instance", -1), ("group", 1)])
def test_the_subsample_spreads_over_the_slice(kind, axis):
    """The subsample mean takes every 16th position, not the first ones: an
    image whose top rows are brighter than the rest (10 standard deviations)
    put a ``predict`` graph's group and instance norm 1.4e-6 to 2.9e-6 off
    float64, relative to the output (every 16th: 1.2e-7 to 2.2e-7; the bound
    sits between, with room for another CPU's rounding either way)."""
    import tensorflow as tf

    from normlab.testing import reference

    rng = np.random.default_rng(17)
    x = rng.standard_normal(size=(2, 48, 48, 64)).astype("float32")
    x[:, :3] += 10.0
    if axis == 1:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    layer = (normlab.layers.GroupNormalization(groups=8, axis=axis) if kind == "group"
             else normlab.layers.InstanceNormalization(axis=axis))
    layer.build(x.shape)
    got = tf.function(lambda t: layer(t))(tf.constant(x)).numpy()
    want = (reference.group_norm(x, 8, axis=axis) if kind == "group" else reference.instance_norm(x, axis=axis))
    assert np.abs(got - want).max() <= 6e-7 * np.abs(want).max()


@pytest.mark.parametrize("op", ["instance", "group", "layer"])
def test_eager_shifted_moments_are_taken_about_the_subsample_mean(op):
    """Outside XLA sums of thousands of terms err by about 1e-6 relative, and one-pass moments about each
    slice's first value, 3 standard deviations out, multiplied that by 10: eager instance norm on
    ``1e4 + N(0, 1)`` was 2.3e-5 off float64 (outputs up to 4.5), and a sample's output moved by 1.6e-5 when a
    far sample joined its batch. About the subsample mean: 1.5e-6, and no move."""
    z = np.random.default_rng(3).normal(size=(5, 64, 64, 16))
    axes = (1, 2, 3) if op == "layer" else (1, 2)
    z = (z - z.mean(axis=axes, keepdims=True)) / z.std(axis=axes, keepdims=True)
    z[:, 0, 0, :] = 3.0  # each slice's first value
    z[4, 0, 0, :] = 300.0  # another sample's far first value: the exact pass for the whole batch before
    x = (z + 1e4).astype(np.float32)
    import tensorflow as tf

    call = {"instance": lambda t: normlab.ops.instance_norm(t), "group": lambda t: normlab.ops.group_norm(t, 4),
            "layer": lambda t: normlab.ops.layer_norm(t, [1, 2, 3])}[op]
    grouped = x.astype(np.float64).reshape(5, 64, 64, 4, 4) if op == "group" else x.astype(np.float64)
    reduced = (1, 2, 4) if op == "group" else axes
    mean, var = grouped.mean(reduced, keepdims=True), grouped.var(reduced, keepdims=True)
    expected = ((grouped - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    alone = call(tf.constant(x[:4])).numpy()
    batch = call(tf.constant(x)).numpy()
    np.testing.assert_allclose(alone, expected[:4], atol=5e-6)
    np.testing.assert_allclose(batch[:4], alone, atol=2e-6)


@pytest.mark.parametrize("size, run", [(4096, 16), (2048, 16), (2032, 1), (1000, 1), (64, 1)])
def test_the_innermost_subsample_takes_runs_of_neighbours(size, run):
    """Along the innermost axis (channels-first positions) every 16th run of 16
    values, where 16 divides it into at least 128 runs (a gather of single values
    there was 3x slower); elsewhere every 16th value. Either way at least
    ``subsample_size`` values, so the offset ratio stays bounded."""
    import tensorflow as tf

    from normlab.backends import policy, tensorflow_stats

    x = np.arange(2 * 3 * size, dtype="float32").reshape(2, 3, size)
    starts = np.arange(0, size, tensorflow_stats.STRIDE * run)
    want = x[:, :, (starts[:, None] + np.arange(run)).ravel()]
    taken = tensorflow_stats.every_stride(tf.constant(x), 2).numpy()
    np.testing.assert_array_equal(taken, want)
    assert tensorflow_stats.stride_count(tf.constant(x), 2) == want.shape[2] >= policy.subsample_size(size)
    mean = tf.function(lambda t: tensorflow_stats.subsample_mean(t, 2))(tf.constant(x)).numpy()
    np.testing.assert_allclose(mean, want.mean(axis=2, keepdims=True), rtol=1e-6)
