"""FilterResponseNormalization and TLU: harness, references, TF Addons compatibility, errors."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test

# Shapes shared across the test files: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC


@pytest.mark.parametrize(
    "kwargs, shape, trainable",
    [
        (dict(), LAST4, 2),
        # channels-first volume, learned epsilon and TLU: gamma, beta, learned_epsilon, tau
        (dict(axis=1, learned_epsilon=True, use_tlu=True), LAST5, 4),
    ],
)
def test_frn_harness(kwargs, shape, trainable):
    run_layer_test(normlab.FilterResponseNormalization, kwargs, shape, expected_trainable=trainable)


def test_tlu_harness():
    run_layer_test(normlab.TLU, dict(affine=True, axis=1), FIRST3, expected_trainable=2, expected_params=12)


@pytest.mark.parametrize(
    "axis, shape, channel_axis",
    [(-1, LAST4, -1), ([1, 2], LAST4, -1), (1, FIRST3, 1), ([2, 3, 4], LAST5, 1)],
)
def test_matches_reference(axis, shape, channel_axis):
    x = np.random.default_rng(0).normal(0.5, 2.0, size=shape).astype("float32")
    layer = normlab.FilterResponseNormalization(
        axis=axis, learned_epsilon=True, use_tlu=True, gamma_initializer="random_uniform",
        beta_initializer="random_uniform", tau_initializer=keras.initializers.RandomUniform(-1.0, 0.0),
    )
    layer.build(shape)
    layer.eps_learned.assign(np.array([-0.05], "float32"))  # |learned| is added, as in TF Addons
    y = ops.convert_to_numpy(layer(x))
    gamma, beta, tau = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta, layer.tau))
    expected = reference.filter_response_norm(x, channel_axis, gamma, beta, 1e-6, learned_epsilon=0.05, tau=tau)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_tfa_config_loads_and_defaults_match():
    config = {
        "name": "frn", "trainable": True, "dtype": "float32", "axis": [1, 2], "epsilon": 1e-6,
        "learned_epsilon": True, "learned_epsilon_constraint": None,
        "beta_initializer": {"class_name": "Zeros", "config": {}},
        "gamma_initializer": {"class_name": "Ones", "config": {}},
        "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None,
    }
    layer = normlab.FilterResponseNormalization.from_config(config)
    # As in TF Addons, the learned epsilon exists before build, as the first weight.
    assert layer.use_eps_learned and layer.eps_learned_constraint is None
    np.testing.assert_allclose(ops.convert_to_numpy(layer.eps_learned), [1e-4])  # TF Addons' initial value
    layer.build((None, 4, 4, 3))
    assert [w.name for w in layer.weights] == ["learned_epsilon", "gamma", "beta"]
    assert normlab.FilterResponseNormalization().eps_learned is None
    positional = normlab.FilterResponseNormalization(1e-5, [1, 2])  # TF Addons' argument order
    assert (positional.epsilon, positional.axis) == (1e-5, [1, 2])


def test_tlu_layer_and_frn_option_agree():
    x = np.random.default_rng(1).normal(size=LAST4).astype("float32")
    tau = keras.initializers.Constant(-0.3)
    fused = normlab.FilterResponseNormalization(use_tlu=True, tau_initializer=tau)
    split = keras.Sequential([normlab.FilterResponseNormalization(), normlab.TLU(tau_initializer=tau)])
    np.testing.assert_allclose(ops.convert_to_numpy(fused(x)), ops.convert_to_numpy(split(x)), atol=1e-6)


def test_tlu_takes_tf_addons_arguments_in_their_order():
    tlu = normlab.TLU(True, "ones")  # TF Addons: TLU(affine=False, tau_initializer="zeros", ...)
    assert tlu.affine and tlu.axis == -1
    x = np.array([[-2.5, 0.0, 0.3]], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(tlu(x)), [[1.0, 1.0, 1.0]])  # max(x, 0 * x + 1)


def test_tlu_passes_the_mask_on():
    """Elementwise, the TLU keeps a sequence mask: a pooling after it averages unmasked steps only."""
    x = np.random.default_rng(2).normal(size=(2, 4, 6)).astype("float32")
    x[0, 2:] = 0.0  # padding
    inputs = keras.Input((4, 6))
    h = normlab.TLU(tau_initializer=keras.initializers.Constant(-0.5))(keras.layers.Masking()(inputs))
    y = ops.convert_to_numpy(keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))(x))
    np.testing.assert_allclose(y[0], np.maximum(x[0, :2], -0.5).mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[1], np.maximum(x[1], -0.5).mean(axis=0), rtol=1e-6, atol=1e-6)


def test_a_built_tlu_takes_the_rank_and_channels_it_was_built_for():
    tlu = normlab.TLU(axis=1)
    tlu.build((2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"expected ndim=4, found ndim=3"):
        tlu(np.zeros((2, 6, 4), "float32"))
    with pytest.raises(ValueError, match=r"expected axis 1 of input shape to have value 6"):
        tlu(np.zeros((2, 5, 4, 4), "float32"))


def test_registry():
    layer = normlab.get("frn(use_tlu=True, axis=[1, 2])")
    assert isinstance(layer, normlab.FilterResponseNormalization) and layer.use_tlu and layer.axis == [1, 2]
    assert isinstance(normlab.get("filter_response"), normlab.FilterResponseNormalization)


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected as a list, the spatial axes to reduce over "
                                         r"\(TF Addons' convention\).*Received: axis=\[1\] for an input of rank 4, "
                                         r"which leaves axes \[2, 3\]\. Pass the channel axis as an int"):
        normlab.FilterResponseNormalization(axis=[1])(np.zeros((2, 3, 3, 2), "float32"))
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected feature axes other than the batch axis 0"):
        normlab.FilterResponseNormalization(axis=[0, 1])(np.zeros((2, 3, 3), "float32"))
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected a single int \(the channel axis\) for TLU\. "
                                        r"Received: axis=\[1, 2\]\. Pass one axis such as axis=-1"):
        normlab.TLU(axis=[1, 2])
    with pytest.raises(TypeError, match=r"Invalid `epsilon`: expected a non-negative float\. Received: epsilon='1e-6'"):
        normlab.FilterResponseNormalization(epsilon="1e-6")


@pytest.mark.parametrize(
    "make, weight",
    [
        (lambda **kw: normlab.TLU(tau_initializer=keras.initializers.Constant(0.5), **kw), "tau"),
        (lambda **kw: normlab.TLU(affine=True, alpha_initializer=keras.initializers.Constant(0.5), **kw), "alpha"),
        (lambda **kw: normlab.FilterResponseNormalization(
            use_tlu=True, tau_initializer=keras.initializers.Constant(0.5), **kw), "tau"),
    ],
    ids=["tlu-tau", "tlu-alpha", "frn-tau"],
)
def test_each_weights_regularizer_and_constraint_act_on_that_weight(make, weight):
    """``tau_*`` and ``alpha_*`` regularizers and constraints reach their own weight:
    the regularizer's loss is that weight's, and an optimizer step projects it."""
    layer = make(**{f"{weight}_regularizer": keras.regularizers.L2(0.25),
                    f"{weight}_constraint": keras.constraints.NonNeg()})
    layer.build(LAST4)
    variable = getattr(layer, weight)
    np.testing.assert_allclose(sum(float(ops.convert_to_numpy(loss)) for loss in layer.losses),
                               0.25 * 0.5 ** 2 * LAST4[-1], rtol=1e-6)
    keras.optimizers.SGD(1.0).apply([ops.ones((LAST4[-1],))], [variable])  # 0.5 - 1 < 0
    np.testing.assert_array_equal(ops.convert_to_numpy(variable), np.zeros(LAST4[-1]))


def test_learned_epsilon_constraint_acts_on_the_learned_epsilon():
    layer = normlab.FilterResponseNormalization(learned_epsilon=True,
                                                learned_epsilon_constraint=keras.constraints.NonNeg())
    layer.build(LAST4)
    keras.optimizers.SGD(1.0).apply([ops.ones((1,))], [layer.eps_learned])  # 1e-4 - 1 < 0
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.eps_learned), [0.0])
    free = normlab.FilterResponseNormalization(learned_epsilon=True)
    free.build(LAST4)
    keras.optimizers.SGD(1.0).apply([ops.ones((1,))], [free.eps_learned])
    np.testing.assert_allclose(ops.convert_to_numpy(free.eps_learned), [1e-4 - 1.0], rtol=1e-6)


@pytest.mark.parametrize("channels", [3, 1])
def test_files_saved_by_normlab_0_1_0_load_with_their_outputs(channels):
    """normlab 0.1.0 held gamma, beta, then learned_epsilon (files saved on TensorFlow). Read
    in get_weights' order (TF Addons', learned_epsilon first) they failed on a shape at 3
    channels, and at 1 put each weight in another's place (outputs 1.9 off)."""
    import pathlib

    base = pathlib.Path(__file__).parent / "fixtures" / f"frn_0.1.0_c{channels}"
    data = np.load(f"{base}.npz")
    model = keras.models.load_model(f"{base}.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(model(data["x"])), data["y"], atol=1e-5)
    fresh = keras.Sequential([keras.Input((4, 4, channels)),
                              normlab.FilterResponseNormalization(learned_epsilon=True, name="frn")])
    fresh.load_weights(f"{base}.weights.h5")
    np.testing.assert_allclose(ops.convert_to_numpy(fresh(data["x"])), data["y"], atol=1e-5)


def test_files_hold_0_1_0s_weight_order_and_get_weights_order_still_loads():
    def layer():
        frn = normlab.FilterResponseNormalization(learned_epsilon=True, use_tlu=True)
        frn.build((None, 4, 4, 3))
        return frn

    source = layer()
    for i, w in enumerate(source.weights):
        w.assign(np.full(w.shape, i + 2.0, "float32"))
    store: dict = {}
    source.save_own_variables(store)
    held = [ops.convert_to_numpy(store[str(i)]) for i in range(len(store))]
    expected = [source.gamma, source.beta, source.eps_learned, source.tau]
    assert all(np.array_equal(h, ops.convert_to_numpy(e)) for h, e in zip(held, expected, strict=True))
    for order in (store, {str(i): w for i, w in enumerate(source.get_weights())}):  # get_weights': epsilon first
        target = layer()
        target.load_own_variables(order)
        for a, b in zip(target.weights, source.weights, strict=True):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
