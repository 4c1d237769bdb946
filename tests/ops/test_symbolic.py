"""The ops on ``keras.Input``'s symbolic tensors, as ``keras.ops`` are: a
functional model built from them infers its shapes, runs as the ops do on
tensors, trains, and saves and loads as a ``.keras`` file."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab import ops as nops

C = 4
X = (np.random.default_rng(0).normal(size=(4, 3, 3, C)) * 2 + 100).astype("float32")
STYLE = np.random.default_rng(1).normal(size=(4, 3, 3, C)).astype("float32")
KERNEL = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
ONES, ZEROS = np.ones(C, "float32"), np.zeros(C, "float32")

# op -> (its call on the inputs, which inputs: "x" (4, 3, 3, C), "style" too, or "kernel" (4, 6)).
CASES = {
    "adaptive_instance_norm": (lambda x, s: nops.adaptive_instance_norm(x, s), "style"),
    "batch_norm": (lambda x: nops.batch_norm(x, training=True, return_stats=True), "x"),
    "batch_renorm": (lambda x: nops.batch_renorm(x, ZEROS, ONES, virtual_batch_size=2), "x"),
    "dynamic_tanh": (lambda x: nops.dynamic_tanh(x, 0.1, gamma=ONES), "x"),
    "evo_norm_b0": (lambda x: nops.evo_norm_b0(x - 100.0, training=True, return_stats=True), "x"),
    "evo_norm_s0": (lambda x: nops.evo_norm_s0(x, groups=2), "x"),
    "filter_response_norm": (lambda x: nops.filter_response_norm(x, tau=ZEROS), "x"),
    "ghost_batch_norm": (lambda x: nops.ghost_batch_norm(x, 2), "x"),
    "group_norm": (lambda x: nops.group_norm(x, 2, gamma=ONES * 2), "x"),
    "instance_norm": (lambda x: nops.instance_norm(x), "x"),
    "layer_norm": (lambda x: nops.layer_norm(x, axis=[1, 2, 3]), "x"),
    "local_response_norm": (lambda x: nops.local_response_norm(x, size=3), "x"),
    "mean_square": (lambda x: nops.mean_square(x, [1, 2]), "x"),
    "moments": (lambda x: nops.moments(x, [1, 2]), "x"),
    "normalize": (lambda x: nops.normalize(x, *nops.moments(x, [1, 2])), "x"),
    "rms_norm": (lambda x: nops.rms_norm(x), "x"),
    "shifted_moments": (lambda x: nops.shifted_moments(x, [0, 1, 2]), "x"),
    "switchable_norm": (lambda x: nops.switchable_norm(x, np.ones(3, "float32") / 3, np.ones(3, "float32") / 3,
                                                       training=True), "x"),
    "tlu": (lambda x: nops.tlu(x, ONES * 100), "x"),
    "power_iteration": (lambda k: nops.power_iteration(k, np.ones((1, 6), "float32"), iterations=3), "kernel"),
    "spectral_norm": (lambda k: nops.spectral_norm(k, np.ones((1, 6), "float32")), "kernel"),
    "standardize_weight": (lambda k: nops.standardize_weight(k), "kernel"),
    "weight_norm": (lambda k: nops.weight_norm(k, np.ones(6, "float32")), "kernel"),
}


def _inputs(which):
    if which == "kernel":  # a weight: every size known
        return [keras.Input((6,), batch_size=4)], [KERNEL]
    inputs = [keras.Input((3, 3, C))] + ([keras.Input((3, 3, C))] if which == "style" else [])
    return inputs, [X] + ([STYLE] if which == "style" else [])


def _run(model, arrays, which):
    """``predict`` (compiled); a weight op's model is called (its sigma, a scalar, has no batch to concatenate)."""
    if which == "kernel":
        return model([ops.convert_to_tensor(a) for a in arrays])
    return model.predict(arrays, batch_size=4, verbose=0)


def _numpy(values):
    return [np.asarray(ops.convert_to_numpy(v)) for v in keras.tree.flatten(values)]


def test_every_op_has_a_case():
    tensor_ops = set(nops.__all__) - {"stats_dtype", "NormOp"}
    assert tensor_ops == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_op_on_keras_inputs_builds_runs_and_saves(name, tmp_path):
    fn, which = CASES[name]
    inputs, arrays = _inputs(which)
    outputs = fn(*inputs)
    assert all(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(outputs))
    model = keras.Model(inputs, outputs)
    assert name in [op.op for op in model.operations if isinstance(op, nops.NormOp)]
    want = _numpy(fn(*(ops.convert_to_tensor(a) for a in arrays)))
    got = _numpy(_run(model, arrays, which))
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):  # (compiled against eager: roundings move)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max())))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for g, w in zip(_numpy(_run(loaded, arrays, which)), got):
        np.testing.assert_array_equal(g, w)


def test_ops_and_layers_in_one_model_train():
    """A mask from a second input, NumPy weights in the call, a layer after: ``fit`` and the summary."""
    x = keras.Input((6, C))
    keep = keras.Input((6,), dtype="bool")
    y = nops.layer_norm(x, gamma=np.linspace(0.5, 2.0, C).astype("float32"), beta=ZEROS)
    y = nops.batch_norm(y, training=True, mask=ops.expand_dims(keep, -1))
    y = normlab.GroupNormalization(groups=2)(keras.layers.Dense(C)(y))
    model = keras.Model([x, keep], y)
    names = [op.name for op in model.operations if isinstance(op, nops.NormOp)]
    assert [name.rsplit("_", 1)[0] if name[-1].isdigit() else name for name in names] == ["layer_norm", "batch_norm"]
    assert model.count_params() == C * C + C + 2 * C  # the ops hold no weights
    data = [X[:, 0].repeat(2, axis=1), np.random.default_rng(3).random((4, 6)) < 0.7]
    model.compile(optimizer="sgd", loss="mse")
    before = model.get_weights()
    model.fit(data, np.zeros((4, 6, C), "float32"), batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(model.get_weights()[0], before[0])


def test_tensors_go_straight_to_the_op():
    from normlab.ops.group_norm import group_norm

    assert nops.group_norm.__wrapped__ is group_norm
    x = ops.convert_to_tensor(X)
    np.testing.assert_array_equal(ops.convert_to_numpy(nops.group_norm(x, 2)), ops.convert_to_numpy(group_norm(x, 2)))


def test_an_unknown_op_name_is_an_error():
    with pytest.raises(ValueError, match=r"Invalid `op`.*Received: op='group_normalization'"):
        nops.NormOp("group_normalization")
