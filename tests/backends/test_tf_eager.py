"""Eager TensorFlow calls of the fast paths run as one ``tf.function`` once hot.

Eagerly each of the hook's ops is dispatched from Python: a (2, 8, 8, 16) group
norm took 2.6 ms against 1.0 ms for Keras' own layer. From the third call with
one signature on, the hook runs as a ``tf.function`` (0.4 ms there); its results
and gradients are the eager ops' up to float rounding, and calls made once never
trace.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from tests.backends.test_fast_paths import CASES, _apply, _inputs

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="eager TensorFlow")

TF_CASES = ["gn-nhwc", "gn-nchw", "in-nchw", "ln-last", "ln-split", "rms-last", "bn-nhwc", "bn-nchw", "bn-rank2"]


def _hook(case):
    from normlab.backends import tensorflow as tf_hooks

    op = CASES[case][0]
    return getattr(tf_hooks, {"group": "group_norm", "layer": "layer_norm", "rms": "rms_norm",
                            "batch": "batch_norm_train"}[op])


def _forward_backward(case, x, gamma, beta, dy):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y, stats = _apply(case, x, gamma, beta)
        loss = tf.reduce_sum(y * dy)
    grads = tape.gradient(loss, [x, gamma, beta])
    return [np.asarray(t) for t in [y, *(stats or ()), *grads]]


@pytest.mark.parametrize("case", TF_CASES)
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_a_hot_eager_call_runs_one_graph_with_the_eager_results(case, offset):
    import tensorflow as tf

    hook = _hook(case)
    x, dy, gamma, beta = _inputs(case, offset)
    x, dy = tf.constant(x, tf.float32), tf.constant(dy, tf.float32)
    gamma, beta = tf.Variable(gamma), tf.Variable(beta)  # gradients reach variables through the graph
    hook.clear()
    first = _forward_backward(case, x, gamma, beta, dy)
    assert not hook.graphs  # a call made once does not trace
    for _ in range(3):
        hot = _forward_backward(case, x, gamma, beta, dy)
    (graph,) = hook.graphs.values()
    assert graph.experimental_get_tracing_count() == 1  # one trace for every later call
    for a, b in zip(first, hot):
        scale = max(np.abs(a).max(), 1.0)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * scale)
    with backends.disabled():
        general = _forward_backward(case, x, gamma, beta, dy)
    for a, b in zip(general, hot):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1.0))


def test_the_eager_graph_makes_the_eager_choices_and_exported_graphs_do_not():
    """Batch norm inference on a 2-D input declines in graphs an exporter may read
    (a tf.function); the graphs of eager calls are never exported, so they serve it."""
    import tensorflow as tf

    from normlab.backends import tensorflow as tf_hooks

    hook = tf_hooks.batch_norm_infer
    hook.clear()
    x = tf.constant(np.random.default_rng(0).normal(5.0, 2.0, size=(6, 16)), tf.float32)
    stats = dict(mean=tf.fill([16], 5.0), variance=tf.fill([16], 4.0), gamma=None, beta=None, epsilon=1e-3)
    results = [hook(x, axis=1, **stats) for _ in range(4)]
    (graph,) = hook.graphs.values()
    assert graph is not None and all(r is not None for r in results)
    for r in results:
        np.testing.assert_allclose(r.numpy(), (x.numpy() - 5.0) / np.sqrt(4.0 + 1e-3), rtol=1e-6, atol=1e-6)
    assert tf.function(lambda x: hook(x, axis=1, **stats))(x) is None  # a user's graph: declines
    rows = tf.constant(np.random.default_rng(1).normal(size=(4, 32)), tf.float32)
    for norm in (tf_hooks.layer_norm, tf_hooks.rms_norm):
        # Sums of squares: EuclideanNorm (no squared copy) eagerly and in the eager
        # call's graph; an exporter's graph has no EuclideanNorm (no TFLite builtin, no ONNX op).
        norm.clear()
        for _ in range(3):
            norm(rows, axes=[1], gamma=None, beta=None, epsilon=1e-3)
        (graph,) = norm.graphs.values()
        eager_ops = {op.type for op in graph.get_concrete_function().graph.get_operations()}
        assert "EuclideanNorm" in eager_ops
        user = tf.function(lambda t, norm=norm: norm(t, axes=[1], gamma=None, beta=None, epsilon=1e-3))
        assert "EuclideanNorm" not in {op.type for op in user.get_concrete_function(rows).graph.get_operations()}


def test_a_signature_whose_graph_declines_stays_eager():
    import tensorflow as tf

    from normlab.backends.tensorflow_eager import graph_when_hot

    hook = graph_when_hot(lambda x, *, scale: x * scale if tf.executing_eagerly() else None)
    x = tf.ones([2, 3])
    assert [float(hook(x, scale=2.0)[0, 0]) for _ in range(5)] == [2.0] * 5
    assert list(hook.graphs.values()) == [None]


def test_graphs_are_used_only_eagerly_and_per_signature():
    import tensorflow as tf

    hook = _hook("gn-nhwc")
    hook.clear()
    x, _, gamma, beta = (tf.constant(a, tf.float32) for a in _inputs("gn-nhwc", 0.0))
    traced = tf.function(lambda x: _apply("gn-nhwc", x, gamma, beta)[0])
    for _ in range(4):
        traced(x)  # inside a tf.function: the hook's ops join that graph
    assert not hook.graphs
    for batch in (2, 2, 2, 1, 1, 1):
        _apply("gn-nhwc", x[:batch], gamma, beta)
    assert len(hook.graphs) == 2  # one per input shape


@pytest.mark.parametrize("case", ["gn-nhwc", "ln-last", "ln-split", "rms-last", "bn-nhwc", "bn-rank2"])
def test_second_derivatives_and_forward_mode_stay_eager(case):
    """In a graph the gradient of layer norm's EuclideanNorm gradient was NaN (a gradient
    penalty, WGAN-GP style, got NaN from its third step), and a ForwardAccumulator got
    None or a TypeError from the graphs: such calls stay eager."""
    import tensorflow as tf

    hook = _hook(case)
    x, _, gamma, beta = (tf.constant(a, tf.float32) for a in _inputs(case, 0.0))
    hook.clear()

    def second_order():
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(tf.sin(_apply(case, x, gamma, beta)[0]))
            g = inner.gradient(y, x)
            z = tf.reduce_sum(g * g)
        return outer.gradient(z, x).numpy()

    def forward_mode():
        with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as acc:
            y = _apply(case, x, gamma, beta)[0]
        return acc.jvp(y)

    with backends.disabled():
        expected = second_order()
    for _ in range(4):
        np.testing.assert_allclose(second_order(), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
        assert forward_mode() is not None
    for _ in range(3):
        _apply(case, x, gamma, beta)  # first order, no tape: hot
    assert len(hook.graphs) == 1
    for _ in range(2):
        jvp = forward_mode()
        assert jvp is not None and np.all(np.isfinite(jvp.numpy()))
        assert np.all(np.isfinite(second_order()))


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "graph"])
@pytest.mark.parametrize("case", ["gn-nhwc", "ln-last", "bn-nhwc", "rms-last"])
def test_forward_mode_in_a_users_graph_takes_the_general_path(case, jit_compile):
    """A ForwardAccumulator inside the user's tf.function failed an assertion in TensorFlow's
    cond_v2 (it cannot carry tangents through the hooks' nested tf.cond: always under XLA, and in a
    plain graph above 2**20 elements); the hooks decline there, the jvp is the general path's."""
    import tensorflow as tf

    x, _, gamma, beta = (tf.constant(a, tf.float32) for a in _inputs(case, 0.0))
    if not jit_compile:  # (the conditional statistics: more than 2**20 elements)
        x = tf.tile(x, [2 ** 21 // x.shape.num_elements() + 1] + [1] * (x.shape.rank - 1))

    def jvp(x, tangent):
        with tf.autodiff.ForwardAccumulator(x, tangent) as acc:
            y = _apply(case, x, gamma, beta)[0]
        return acc.jvp(y)

    tangent = tf.sin(x)
    with backends.disabled():
        expected = tf.function(jvp, jit_compile=jit_compile)(x, tangent).numpy()
    got = tf.function(jvp, jit_compile=jit_compile)(x, tangent).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_graphs_are_few_and_large_inference_inputs_stay_eager(caplog):
    """Every signature kept its graph (about a megabyte each, which TensorFlow never
    frees: +683 MB over 511 row counts), and TensorFlow warned of frequent
    retracing, blaming the caller."""
    import logging

    import tensorflow as tf

    from normlab.backends.tensorflow_eager import MAX_ELEMENTS, MAX_GRAPHS

    ln = _hook("ln-last")
    ln.clear()
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for rows in range(1, MAX_GRAPHS + 8):
            for _ in range(3):
                ln(tf.ones([rows, 8]), axes=[1], gamma=None, beta=None, epsilon=1e-3)
    assert len(ln.graphs) == MAX_GRAPHS
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    traces = sum(g.experimental_get_tracing_count() for g in ln.graphs.values())
    for _ in range(3):  # more signatures in turn than graphs: the later ones stay eager, nothing traces again
        for rows in range(1, MAX_GRAPHS + 8):
            ln(tf.ones([rows, 8]), axes=[1], gamma=None, beta=None, epsilon=1e-3)
    assert sum(g.experimental_get_tracing_count() for g in ln.graphs.values()) == traces == MAX_GRAPHS
    ln.clear()
    big = tf.ones([MAX_ELEMENTS // 256 + 1, 256])
    for _ in range(4):
        ln(big, axes=[1], gamma=None, beta=None, epsilon=1e-3)
    assert len(ln.graphs) == 1  # group, layer and RMS norm: a graph at any size
    ln.clear()
    from normlab.backends import tensorflow as tf_hooks

    infer = tf_hooks.batch_norm_infer
    infer.clear()
    stats = dict(mean=tf.zeros([256]), variance=tf.ones([256]), gamma=None, beta=None, epsilon=1e-3)
    for _ in range(4):
        infer(big, axis=1, **stats)
    assert not infer.graphs  # batch norm in inference: large inputs stay eager


@pytest.mark.parametrize("op", ["group_norm", "layer_norm", "batch_norm_train"])
def test_hot_eager_calls_decide_in_their_graph(op, monkeypatch):
    """An eager ``tf.cond`` reads its predicate on the host (a device sync).
    A signature's first eager calls (``HOT_AFTER``) decide that way; from then
    on it runs as a graph, whose conditionals decide on the device."""
    import tensorflow as tf

    from normlab import ops as nops
    from normlab.backends import tensorflow as tf_hooks
    from normlab.backends import tensorflow_eager

    cond_module = pytest.importorskip("tensorflow.python.ops.cond")
    if not hasattr(cond_module, "_eager_cond_implementation"):
        pytest.skip("TensorFlow's eager cond moved")
    reads: list[str] = []
    original = cond_module._eager_cond_implementation

    def spy(*args, **kwargs):
        reads.append(op)
        return original(*args, **kwargs)

    monkeypatch.setattr(cond_module, "_eager_cond_implementation", spy)
    fn = {"group_norm": lambda t: nops.group_norm(t, 4, -1), "layer_norm": lambda t: nops.layer_norm(t, -1),
          "batch_norm_train": lambda t: nops.batch_norm(t, axis=-1, training=True)}[op]
    x = tf.constant(1e4 + np.random.default_rng(0).normal(size=(3, 5, 5, 12)), tf.float32)

    def step():  # inference (its statistics decide by conditionals) and a training step
        y = fn(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * x)
        return y, tape.gradient(loss, x)

    getattr(tf_hooks, op).clear()
    for _ in range(tensorflow_eager.HOT_AFTER):
        step()
    assert reads, "the spy saw no eager conditional in the first calls"
    reads.clear()
    assert all(np.isfinite(t.numpy()).all() for t in step())
    assert not reads, f"{op}: {len(reads)} eager conditionals in a hot call"


@pytest.mark.parametrize("use_stats", [False, True])
def test_hot_fused_batch_norm_gradients_with_and_without_its_statistics(use_stats, monkeypatch):
    """The graph's backward receives zeros for statistics no loss uses (eagerly: no
    call at all) and skips their full-size term then; where a loss uses them, their
    gradient reaches the input as eagerly."""
    import tensorflow as tf

    from normlab.backends import tensorflow_stats

    monkeypatch.setattr(tensorflow_stats, "FUSED_MIN_ELEMENTS", 0)  # the fused kernel at this size
    hook = _hook("bn-nhwc")
    hook.clear()
    x, dy, gamma, beta = (tf.constant(a, tf.float32) for a in _inputs("bn-nhwc", 3.0))
    weights = tf.constant(np.linspace(-1.0, 1.0, 8), tf.float32)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, (mean, variance) = _apply("bn-nhwc", x, gamma, beta)
            loss = tf.reduce_sum(y * dy)
            if use_stats:
                loss += tf.reduce_sum(mean * weights) + tf.reduce_sum(variance * weights)
        return [g.numpy() for g in tape.gradient(loss, [x, gamma, beta])]

    eager = grads()
    hot = [grads() for _ in range(3)][-1]
    (graph,) = hook.graphs.values()
    assert any(op.type.startswith("FusedBatchNorm") for op in graph.get_concrete_function().graph.get_operations())
    for a, b in zip(eager, hot):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * max(np.abs(a).max(), 1.0))
    with backends.disabled():
        general = grads()
    for a, b in zip(general, hot):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1.0))


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_the_fused_kernels_variance_gradient_at_an_offset(offset):
    """The gradient through the returned batch variance took ``x - mean`` with the mean rounded at the data's
    offset: 5.7e-3 off float64 at 1e6 (relative to its largest value) on TensorFlow's fused kernel, where the
    general path is within 1e-7; ``(x - shift) - residual mean`` now, 5.1e-8."""
    import tensorflow as tf

    from normlab import ops as nops
    from normlab.backends import tensorflow_stats

    rng = np.random.default_rng(0)
    x = tf.constant((offset + rng.standard_normal((2048, 64))).astype(np.float32))
    assert tensorflow_stats.fused_serves(x)
    weights = rng.standard_normal(64)
    centered = x.numpy().astype(np.float64) - offset
    expected = 2.0 * weights * (centered - centered.mean(0)) / centered.shape[0]
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, _, variance = nops.batch_norm(x, training=True, return_stats=True)
        loss = tf.reduce_sum(variance * weights.astype(np.float32))
    got = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
