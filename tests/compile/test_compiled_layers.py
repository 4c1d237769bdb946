"""Every layer in :func:`normlab.registry`, compiled the way its backend
compiles a Keras model, matches eager execution, forward and backward,
with the fast paths on and a batch size that changes between calls:

* torch: ``torch.compile(fullgraph=True)`` (a graph break, e.g. a value
  read on the host, is an error), the batch dimension marked dynamic; the
  second batch size must reuse the graph (``fail_on_recompile``);
* JAX: ``jax.jit`` of ``layer.stateless_call`` and its VJP, against the
  same function under ``jax.disable_jit()``;
* TensorFlow: ``tf.function(jit_compile=True)`` with an unknown batch size
  in its input signature, against eager.

Each compares the output, the gradients with respect to the input and the
trainable weights, and the non-trainable weights after the call (moving
statistics, power-iteration vectors, weight norm's initialization).
Then ``model.fit(..., jit_compile=True)`` trains a small conv model that
holds every layer on 48 samples in batches of 32 (a final partial batch).

Runs in the process of the Keras backend under test; the others' tests skip.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from normlab import backends
from normlab import ops as nops
from tests.backends import _layers

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.slow  # compilation: seconds per test (see the module doc for the totals)
ATOL = 1e-5  # float32, relative to the larger of 1 and each result's largest magnitude
BATCHES = (4, 3)  # the second reuses the compiled function with another batch size


def _numpy(t):
    return None if t is None else np.asarray(ops.convert_to_numpy(t), np.float64)


def _snapshot(layer):
    return [np.array(ops.convert_to_numpy(w)) for w in layer.weights]


def _restore(layer, values):
    for w, v in zip(layer.weights, values):
        w.assign(v)


def _compare(got, expected, what):
    assert got.keys() == expected.keys(), f"{what}: {sorted(got)} != {sorted(expected)}"
    for key, ref in expected.items():
        if ref is None:
            assert got[key] is None, f"{what}: {key} has a gradient only when compiled"
            continue
        assert got[key] is not None and got[key].shape == ref.shape, f"{what}: {key}"
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        err = float(np.max(np.abs(got[key] - ref))) if ref.size else 0.0
        assert err <= ATOL * scale, f"{what}: {key} differs by {err:.3g} (tolerance {ATOL * scale:.3g})"


def _results(layer, y, grads, names):
    out = {"y": _numpy(y), "dx": _numpy(grads[0])}
    out.update({f"d[{n}]": _numpy(g) for n, g in zip(names, grads[1:])})
    out.update({f"state[{w.path}]": _numpy(w) for w in layer.non_trainable_weights})
    return out


def _built(case):
    """The layer, built and called once eagerly (weight_norm's data-dependent
    initialization happens here), and its weights then."""
    keras.utils.set_random_seed(0)
    layer = case.build()
    case.call(layer, ops.convert_to_tensor(case.inputs(BATCHES[0], seed=99)))
    return layer, _snapshot(layer)


#: Cases that fail for causes in files these tests do not own, with the change
#: each needs; strict, so that a mark goes as soon as its cause is fixed.
KNOWN_FAILURES: dict[str, str] = {}

CASE_IDS = [
    pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[i])) if i in KNOWN_FAILURES else i
    for i in sorted(_layers.BY_ID)
]


# --------------------------------------------------------------------------
# torch


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the torch backend's jit_compile")
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_torch_compile_fullgraph_matches_eager(case_id):
    import torch

    assert backends.enabled()
    case = _layers.BY_ID[case_id]
    layer, initial = _built(case)
    names = [w.path for w in layer.trainable_weights]

    def run(fn, x, dy, dynamic):
        x = torch.from_numpy(x).requires_grad_(True)
        if dynamic:
            torch._dynamo.mark_dynamic(x, 0)
        y = fn(x)
        params = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(y, [x] + params, torch.from_numpy(dy), allow_unused=True)
        return _results(layer, y.detach(), grads, names)

    torch._dynamo.reset()
    compiled = torch.compile(lambda v: case.call(layer, v), fullgraph=True)
    for i, batch in enumerate(BATCHES):
        x, dy = case.inputs(batch, seed=batch), case.cotangent(batch, seed=batch + 10)
        _restore(layer, initial)
        eager = run(lambda v: case.call(layer, v), x, dy, False)
        _restore(layer, initial)
        if i == 0:
            got = run(compiled, x, dy, True)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                got = run(compiled, x, dy, True)
        _compare(got, eager, f"{case_id}, batch {batch}, torch.compile vs eager")


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the torch backend's jit_compile")
@pytest.mark.parametrize("case_id", sorted(_layers.BY_ID))
def test_torch_compile_dynamic_true_traces_in_one_graph(case_id):
    """``dynamic=True`` traces every float argument (epsilon, clipping bounds) as
    a ``SymFloat`` and every size as a symbol: an op that hands such a number
    to ``math`` or to Keras' ``maximum`` breaks the graph, an error under
    ``fullgraph=True``. Dynamo's graph runs as it is (``backend="eager"``):
    the test above compiles with inductor."""
    import torch

    case = _layers.BY_ID[case_id]
    layer, initial = _built(case)
    names = [w.path for w in layer.trainable_weights]

    def run(fn, x, dy):
        x = torch.from_numpy(x).requires_grad_(True)
        y = fn(x)
        params = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(y, [x] + params, torch.from_numpy(dy), allow_unused=True)
        return _results(layer, y.detach(), grads, names)

    torch._dynamo.reset()
    compiled = torch.compile(lambda v: case.call(layer, v), fullgraph=True, dynamic=True, backend="eager")
    for i, batch in enumerate(BATCHES):
        x, dy = case.inputs(batch, seed=batch), case.cotangent(batch, seed=batch + 10)
        _restore(layer, initial)
        eager = run(lambda v: case.call(layer, v), x, dy)
        _restore(layer, initial)
        if i == 0:
            got = run(compiled, x, dy)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                got = run(compiled, x, dy)
        _compare(got, eager, f"{case_id}, batch {batch}, torch.compile(dynamic=True) vs eager")


# --------------------------------------------------------------------------
# JAX


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit is the JAX backend's compilation")
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_jax_jit_matches_eager(case_id):
    import jax

    case = _layers.BY_ID[case_id]
    layer, initial = _built(case)
    names = [w.path for w in layer.trainable_weights]
    kwargs = {} if case.training is None else {"training": case.training}

    def step(trainable, non_trainable, x, dy):
        def forward(x, trainable):
            return layer.stateless_call(trainable, non_trainable, case.layer_input(x), **kwargs)

        y, vjp, new_non_trainable = jax.vjp(forward, x, trainable, has_aux=True)
        dx, dtrainable = vjp(dy)
        return y, [dx] + list(dtrainable), new_non_trainable

    compiled = jax.jit(step)

    def run(fn, x, dy):
        _restore(layer, initial)
        trainable = [w.value for w in layer.trainable_weights]
        non_trainable = [w.value for w in layer.non_trainable_weights]
        y, grads, new_non_trainable = fn(trainable, non_trainable, x, dy)
        for w, v in zip(layer.non_trainable_weights, new_non_trainable):
            w.assign(v)
        return _results(layer, y, grads, names)

    for batch in BATCHES:
        x, dy = case.inputs(batch, seed=batch), case.cotangent(batch, seed=batch + 10)
        with jax.disable_jit():
            eager = run(step, x, dy)
        got = run(compiled, x, dy)
        _compare(got, eager, f"{case_id}, batch {batch}, jax.jit vs eager")


# --------------------------------------------------------------------------
# TensorFlow


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function(jit_compile=True) is TensorFlow's XLA path")
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_tf_function_xla_matches_eager(case_id):
    import tensorflow as tf

    case = _layers.BY_ID[case_id]
    layer, initial = _built(case)
    names = [w.path for w in layer.trainable_weights]

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = case.call(layer, x)
        grads = tape.gradient(y, [x] + list(layer.trainable_variables), output_gradients=dy)
        return y, grads

    x_shape, y_shape = case.input_shape(1)[1:], case.cotangent(1).shape[1:]
    compiled = tf.function(step, jit_compile=True, input_signature=[
        tf.TensorSpec((None,) + x_shape, tf.float32), tf.TensorSpec((None,) + y_shape, tf.float32)])

    def run(fn, x, dy):
        _restore(layer, initial)
        y, grads = fn(tf.constant(x), tf.constant(dy))
        return _results(layer, y, grads, names)

    for batch in BATCHES:
        x, dy = case.inputs(batch, seed=batch), case.cotangent(batch, seed=batch + 10)
        eager = run(step, x, dy)
        got = run(compiled, x, dy)
        _compare(got, eager, f"{case_id}, batch {batch}, tf.function(jit_compile=True) vs eager")
    assert compiled.experimental_get_tracing_count() == 1  # the batch size is unknown to the one trace


# --------------------------------------------------------------------------
# model.fit(jit_compile=True) with a final partial batch


def test_backend_hooks_are_imported_with_normlab():
    """The first fast_path() call may be traced (a Keras model's first call
    is often inside its compiled train step), and torch.compile cannot trace
    an import: the hooks' module must be loaded with the package."""
    import os
    import subprocess
    import sys

    code = ("import sys, keras, normlab; "
            "print(f'normlab.backends.{keras.backend.backend()}' in sys.modules)")
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1:] == ["True"], out.stdout + out.stderr


#: On torch, the fit model holds the norms the partial batch once broke and one
#: more whose statistics span the batch: inductor takes about 5 minutes on 2 cores to
#: compile a train step with every layer, and test_torch_compile_fullgraph_matches_eager
#: already compiles each layer, forward and backward, with a dynamic batch.
FIT_ONLY = {"group", "batch-train", "evonorm_b0-train"} if BACKEND == "torch" else None


def _model_with_every_layer():
    """Conv2D, then every activation norm of the cases in turn, then every
    kernel wrapper around its own conv; one model, so one compilation."""
    blocks = [keras.layers.Conv2D(_layers.CHANNELS, 3, padding="same")]
    for case in _layers.CASES:
        if case.channels_first or case.training is False or case.two_inputs:
            continue  # fit calls every layer with training=True, channels-last, in a Sequential
        if FIT_ONLY is not None and case.id not in FIT_ONLY:
            continue
        blocks.append(case.build())
    return keras.Sequential(
        [keras.Input(_layers.SPATIAL + (3,))] + blocks
        + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )


def _fit(jit_compile):
    keras.utils.set_random_seed(0)
    model = _model_with_every_layer()
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, size=(48,) + _layers.SPATIAL + (3,)).astype("float32")
    y = rng.integers(0, 3, 48)
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"], [(w.path, ops.convert_to_numpy(w)) for w in model.weights]


def test_fit_jit_compile_with_a_partial_batch_matches_eager():
    """48 samples, batch 32: the epoch ends with a batch of 16, which a
    compiled train step meets with a new (on torch: symbolic) batch size.
    On torch this once failed inside inductor ("cannot determine truth value
    of Relational: 1 < s69") after graph breaks in the fast paths."""
    names = {case.name for case in _layers.CASES}
    compiled_loss, compiled_weights = _fit(True)
    eager_loss, eager_weights = _fit(False)
    assert np.isfinite(compiled_loss).all(), compiled_loss
    np.testing.assert_allclose(compiled_loss, eager_loss, rtol=1e-4, err_msg=f"layers {sorted(names)}")
    # Every weight after both steps: the updates and the moving statistics.
    assert len(compiled_weights) == len(eager_weights)
    for (path, value), (_, expected) in zip(compiled_weights, eager_weights):
        np.testing.assert_allclose(value, expected, rtol=1e-3, atol=1e-3, err_msg=path)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the torch backend's jit_compile")
@pytest.mark.parametrize("state", ["built, never called", "weights set"])
def test_torch_compile_of_a_weight_norm_not_yet_seen_initialized(state):
    # The first call of a data-dependent WeightNormalization read `initialized`
    # on the host: a graph break (an error with fullgraph=True) and no torch.export.
    import torch

    import normlab

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32"))

    def fresh():
        keras.utils.set_random_seed(0)
        layer = normlab.WeightNormalization(keras.layers.Conv2D(8, 3, padding="same"))
        layer.build(tuple(x.shape))
        return layer

    reference = fresh()
    expected = ops.convert_to_numpy(reference(x, training=True))  # eager: initializes from x
    layer = fresh()
    if state == "weights set":
        layer.set_weights(reference.get_weights())
    torch._dynamo.reset()
    got = torch.compile(lambda v: layer(v, training=True), fullgraph=True)(x)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, atol=1e-5)
    assert bool(ops.convert_to_numpy(layer.initialized))
    exported = fresh()
    exported.set_weights(reference.get_weights())

    class Module(torch.nn.Module):
        def forward(self, v):
            return exported(v, training=False)

    program = torch.export.export(Module(), (x,))
    np.testing.assert_allclose(ops.convert_to_numpy(program.module()(x)), expected, atol=1e-5)


@pytest.mark.parametrize("ghost", [None, 2], ids=["batch", "ghost"])
def test_masked_batch_norm_compiles_in_one_graph(ghost):
    """Masked statistics (NaN padding, a first position masked) compiled as a
    whole: torch.compile(fullgraph=True), jax.jit, tf.function with XLA."""
    import normlab

    rng = np.random.default_rng(3)
    x = (1e4 + rng.normal(size=(4, 6, 3))).astype("float32")
    mask = rng.random((4, 6)) < 0.6
    mask[0, 0], mask[1, 1] = False, True
    x[~mask] = np.nan
    layer = normlab.BatchNormalization(virtual_batch_size=ghost, momentum=0.5)
    layer.build(x.shape)
    initial = _snapshot(layer)

    def call(v, m):
        return layer(v, training=True, mask=m)

    expected = [_numpy(call(x, mask))[mask], _numpy(layer.moving_mean), _numpy(layer.moving_variance)]
    _restore(layer, initial)
    if BACKEND == "torch":
        import torch

        torch._dynamo.reset()
        y = torch.compile(call, fullgraph=True)(torch.from_numpy(x), torch.from_numpy(mask))
    elif BACKEND == "jax":
        import jax

        def stateless(trainable, non_trainable, v, m):
            return layer.stateless_call(trainable, non_trainable, v, training=True, mask=m)

        y, non_trainable = jax.jit(stateless)([w.value for w in layer.trainable_variables],
                                              [w.value for w in layer.non_trainable_variables], x, mask)
        for variable, value in zip(layer.non_trainable_variables, non_trainable):
            variable.assign(value)
    else:
        import tensorflow as tf

        y = tf.function(call, jit_compile=True)(tf.constant(x), tf.constant(mask))
    got = [_numpy(y)[mask], _numpy(layer.moving_mean), _numpy(layer.moving_variance)]
    for name, a, b in zip(["y", "moving_mean", "moving_variance"], got, expected):
        assert np.isfinite(a).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile's dynamic shapes")
def test_masked_batch_norm_under_dynamic_shapes():
    """torch.compile(dynamic=True) gives the mask's and the input's sizes symbols of their own: the mask's
    static check raised there ("mask of shape (s1, s2, 1)"), a graph break."""
    import torch

    import normlab

    rng = np.random.default_rng(4)
    layer = normlab.BatchNormalization()
    layer.build((None, 6, 3))

    def loss(v, m):
        return torch.where(m[..., None], layer(v, training=True, mask=m), 0.0).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="eager")
    for batch in (3, 5, 8):
        x = torch.tensor(1e4 + rng.normal(size=(batch, 6, 3)), dtype=torch.float32, requires_grad=True)
        m = torch.tensor(rng.random((batch, 6)) < 0.5)
        got = compiled(x, m)
        (dx,) = torch.autograd.grad(got, [x])
        x2 = x.detach().clone().requires_grad_(True)
        want = loss(x2, m)
        (dx2,) = torch.autograd.grad(want, [x2])
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
        np.testing.assert_allclose(dx.numpy(), dx2.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile's dynamic shapes")
def test_a_mask_of_higher_rank_is_named_under_dynamic_shapes():
    """Under a torch trace the mask's sizes go unchecked (symbols the comparison cannot relate), its rank
    not: a mask of one more axis broadcast the output to a larger shape, silently."""
    import torch

    from normlab import ops as nops

    def call(v, m):
        return nops.batch_norm(v, None, None, training=True, mask=m)

    torch._dynamo.reset()
    compiled = torch.compile(call, dynamic=True, backend="eager")
    x = torch.randn(4, 6, 3)
    assert tuple(compiled(x, torch.ones(4, 6, 1, dtype=torch.bool)).shape) == (4, 6, 3)
    with pytest.raises(ValueError, match=r"Invalid `mask`.*Received: mask of shape \(2, 4, 6, 1\)"):
        compiled(x, torch.ones(2, 4, 6, 1, dtype=torch.bool))


def _compile(fn):
    """``fn`` as each backend compiles a training step: torch.compile, jax.jit, tf.function with XLA."""
    if BACKEND == "torch":
        import torch

        return torch.compile(fn, fullgraph=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def test_compiled_group_sums_split_by_the_group_axis():
    """Channels-last group norm with several channels per group, compiled (the general path under
    torch.compile): inductor fused the sum of ``(N, H, W, G, C/G)`` over ``(1, 2, 4)`` into one loop that
    accumulated the positions one after another, 7.1e-5 off float64 at an offset of 1e6; summed over the
    group's channels, then one axis at a time, 1.3e-6."""
    x = (1e6 + np.random.default_rng(1).standard_normal((4, 64, 64, 64))).astype("float32")
    grouped = x.astype(np.float64).reshape(4, 64, 64, 32, 2)
    expected = (grouped - grouped.mean((1, 2, 4), keepdims=True)) / np.sqrt(grouped.var((1, 2, 4), keepdims=True)
                                                                           + 1e-3)
    y = _numpy(_compile(lambda v: nops.group_norm(v, 32))(ops.convert_to_tensor(x)))
    np.testing.assert_allclose(y, expected.reshape(x.shape), atol=5e-6)
