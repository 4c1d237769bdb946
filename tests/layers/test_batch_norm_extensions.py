"""BatchNormalization's renorm (parity with Keras), ghost batches, and frozen-statistics mode."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab.testing import reference
from normlab.testing.harness import run_layer_test

CLIPPING = {"rmax": 1.5, "rmin": 0.7, "dmax": 0.3}

# Shapes shared across the test files: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC


@pytest.mark.parametrize(
    "kwargs, shape, non_trainable",
    [
        (dict(renorm=True, renorm_clipping=CLIPPING), LAST4, 5),
        (dict(axis=1, virtual_batch_size=2), FIRST3, 2),
    ],
)
def test_harness(kwargs, shape, non_trainable):
    run_layer_test(normlab.BatchNormalization, kwargs, shape, expected_trainable=2,
                   expected_non_trainable=non_trainable)


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


@pytest.mark.parametrize("clipping", [CLIPPING, None])
def test_renorm_matches_keras_over_training_steps(clipping):
    kwargs = dict(momentum=0.8, renorm=True, renorm_clipping=clipping, renorm_momentum=0.7,
                  moving_variance_initializer=keras.initializers.Constant(2.0))
    ours, theirs = normlab.BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    shape = LAST4
    ours.build(shape)
    theirs.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    rng = np.random.default_rng(0)
    start = [rng.uniform(0.5, 1.5, size=6).astype("float32"), rng.normal(size=6).astype("float32")]
    ours.set_weights(start + ours.get_weights()[2:])
    theirs.set_weights(ours.get_weights())
    for step in range(4):
        x = rng.normal(step - 1.0, 1.0 + step, size=shape).astype("float32")
        np.testing.assert_allclose(ops.convert_to_numpy(ours(x, training=True)),
                                   ops.convert_to_numpy(theirs(x, training=True)), rtol=1e-5, atol=1e-5,
                                   err_msg=f"training output, step {step}")
        for name, a, b in zip([w.name for w in ours.weights], numpy_weights(ours), numpy_weights(theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name}, step {step}")
    x = rng.normal(size=shape).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)


def test_renorm_matches_keras_under_fit():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(16, 5)).astype("float32")
    target = rng.normal(size=(16, 5)).astype("float32")
    models = []
    for cls in (normlab.BatchNormalization, keras.layers.BatchNormalization):
        model = keras.Sequential([keras.Input((5,)), cls(renorm=True, renorm_clipping=CLIPPING, momentum=0.5)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        models.append(model)
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.fit(x, target, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_renorm_config_is_keras_config():
    kwargs = dict(renorm=True, renorm_clipping={"rmax": 3.0}, renorm_momentum=0.9)
    ours = normlab.BatchNormalization(**kwargs).get_config()
    theirs = keras.layers.BatchNormalization(**kwargs).get_config()
    for key in ("renorm", "renorm_clipping", "renorm_momentum"):
        assert ours[key] == theirs[key]
    assert normlab.BatchNormalization.from_config(theirs).renorm_clipping == {"rmax": 3.0}


@pytest.mark.parametrize("renorm", [False, True])
def test_ghost_batches_in_training_match_reference(renorm):
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, size=LAST4).astype("float32")
    x[2:] = 3.0 * x[2:] - 2.0  # the two ghost batches differ
    layer = normlab.BatchNormalization(momentum=0.5, virtual_batch_size=2, renorm=renorm,
                                       renorm_clipping=CLIPPING if renorm else None,
                                       gamma_initializer="random_uniform", beta_initializer="random_uniform")
    y = ops.convert_to_numpy(layer(x, training=True))
    gamma, beta = (ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    renorm_args = (np.zeros(6), np.ones(6)) if renorm else (None, None)
    expected, mean, var = reference.batch_renorm(x, *renorm_args, -1, gamma, beta, 1e-3, CLIPPING, virtual_batch_size=2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.5 * mean, atol=1e-5)
    if not renorm:
        np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), 0.5 + 0.5 * var, rtol=1e-5)
    whole_batch = reference.batch_norm(x, gamma=gamma, beta=beta)[0]
    assert not np.allclose(y, whole_batch, atol=1e-2)  # ghost statistics really are per sub-batch

    inference = ops.convert_to_numpy(layer(x[:3]))  # any batch size; moving statistics, never ghost batches
    moving = [ops.convert_to_numpy(w) for w in (layer.moving_mean, layer.moving_variance)]
    np.testing.assert_allclose(inference, reference.batch_norm(x[:3], -1, gamma, beta, 1e-3, *moving)[0], atol=1e-5)


def test_ghost_batch_size_must_divide_the_batch():
    layer = normlab.BatchNormalization(virtual_batch_size=3)
    with pytest.raises(ValueError, match=r"Invalid `virtual_batch_size`: expected a divisor of the batch size, so that "
                                         r"the batch splits into equal ghost batches\. Received: virtual_batch_size=3 "
                                         r"with a batch of 8\. Use one of \[1, 2, 4, 8\]"):
        layer(np.zeros((8, 4), "float32"), training=True)
    layer(np.zeros((8, 4), "float32"))  # inference: no ghost batches, any batch size


def test_fit_says_when_the_last_batch_does_not_split_into_ghost_batches():
    """``fit``'s last batch of 2 (10 samples in batches of 4). A TensorFlow
    graph's batch size is unknown when it is traced: its assertion says it,
    where the reshape's own error spoke of 16 values and multiples of 32."""
    x = np.random.default_rng(0).normal(size=(10, 8)).astype("float32")
    model = keras.Sequential([keras.Input((8,)), normlab.BatchNormalization(virtual_batch_size=4)])
    model.compile("sgd", "mse", jit_compile=False)
    model.fit(x[:8], x[:8], batch_size=4, epochs=1, verbose=0)  # whole ghost batches: trains
    with pytest.raises(Exception, match=r"(?s)Invalid `virtual_batch_size`: expected a divisor of the batch size.*"
                                        r"a multiple of 4"):
        model.fit(x, x, batch_size=4, epochs=1, verbose=0)


def test_use_moving_statistics_freezes_statistics_but_trains_affine():
    rng = np.random.default_rng(3)
    x = rng.normal(4.0, 2.0, size=(8, 3)).astype("float32")
    layer = normlab.BatchNormalization(use_moving_statistics=True)
    y = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), atol=1e-5)  # moving statistics, in training too
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, rng.normal(size=(8, 3)).astype("float32"), batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(ops.convert_to_numpy(layer.gamma), 1.0)  # the affine still trains
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.0)  # the statistics do not
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), 1.0)
    assert normlab.BatchNormalization.from_config(layer.get_config()).use_moving_statistics


def test_clipping_without_renorm_warns_that_it_is_ignored():
    """TF-Keras took it silently: plain batch norm, with the clipping the user asked for nowhere."""
    with pytest.warns(UserWarning, match=r"ignores renorm_clipping=\{'rmax': 3\.0\} without renorm=True"):
        layer = normlab.BatchNormalization(renorm_clipping={"rmax": 3.0})
    assert not layer.renorm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normlab.BatchNormalization(renorm=True, renorm_clipping={"rmax": 3.0})
        normlab.BatchNormalization(renorm_clipping={})


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(renorm=True, renorm_clipping={"rmax": 0.5, "rmin": 1.0}),
         r"Invalid `renorm_clipping`: expected rmin <= 1 <= rmax \(defaults 0 and inf\): r = std / moving std is "
         r"clipped to \[rmin, rmax\], and r = 1 must stay 1 or training outputs never match inference\. "
         r"Received: renorm_clipping=\{'rmax': 0\.5, 'rmin': 1\.0\}\. Pass a dict such as"),
        (dict(renorm=True, renorm_clipping={"rmax": 3.0, "r_min": 0.3}), r"Invalid `renorm_clipping`: expected None or a dict with keys"),
        (dict(renorm=True, renorm_momentum=2.0), r"Invalid `renorm_momentum`: expected a float in \[0, 1\].*Received: renorm_momentum=2\.0"),
        (dict(virtual_batch_size=-2), r"Invalid `virtual_batch_size`: expected a positive integer \(the number of samples per ghost "
                                      r"batch\) or None\. Received: virtual_batch_size=-2\. Pass an int such as virtual_batch_size=32"),
    ],
)
def test_errors_name_argument_value_and_fix(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        normlab.BatchNormalization(**kwargs)


@pytest.mark.parametrize("padding", ["a whole ghost batch", "most of one"])
def test_ghost_batches_with_a_mask_weigh_their_unmasked_positions(padding):
    # A ghost batch of padding only once counted as mean 0, variance 0: half the moving statistics.
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 6, 3)).astype("float32")
    mask = np.ones((4, 6), bool)
    if padding == "a whole ghost batch":
        mask[2:] = False
    else:
        mask[2:, 1:] = False
    layer = normlab.BatchNormalization(virtual_batch_size=2, momentum=0.0)
    layer(x, training=True, mask=mask)
    ghosts = [(x[g:g + 2][mask[g:g + 2]], mask[g:g + 2].sum()) for g in (0, 2)]
    kept = [(values, n) for values, n in ghosts if n]
    weights = [n for _, n in kept]
    mean = np.average([v.astype(np.float64).mean(0) for v, _ in kept], axis=0, weights=weights)
    variance = np.average([v.astype(np.float64).var(0) for v, _ in kept], axis=0, weights=weights)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-5)


def test_a_mask_of_the_wrong_rank_is_an_error_in_inference_too():
    x = np.ones((4, 6, 3), "float32")
    for training in (False, True):
        with pytest.raises(ValueError, match=r"Invalid `mask`: expected a tensor of the inputs' shape without their "
                                             r"last axis.*Received: mask.shape=\(4, 6, 3\)"):
            normlab.BatchNormalization()(x, training=training, mask=np.ones((4, 6, 3), bool))


@pytest.mark.parametrize("variance", [4.0, 0.0], ids=["constant", "zeros"])
def test_renorm_starts_and_takes_a_step_as_keras(variance):
    """``renorm_stddev`` starts at the square root of the moving variance's
    initial value (with the default "ones" a variance would pass unseen), and
    a zero one is floored at ``sqrt(epsilon)`` as Keras floors it (a floor of
    ``epsilon`` gave outputs 6700 off). Keras' layer built alongside, no weight copied."""
    kwargs = dict(renorm=True, moving_variance_initializer=keras.initializers.Constant(variance))
    ours, theirs = normlab.BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 5, 3)).astype("float32")
    ours.build(x.shape)
    theirs.build(x.shape)
    names = [w.name for w in ours.weights]
    for name, a, b in zip(names, numpy_weights(ours), numpy_weights(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f"{name} after build")
    expected = ops.convert_to_numpy(theirs(x, training=True))
    scale = max(1.0, float(np.abs(expected).max()))  # about 1e2 with a zero renorm_stddev: r = std / sqrt(eps)
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x, training=True)), expected, rtol=1e-5, atol=1e-5 * scale)
    for name, a, b in zip(names, numpy_weights(ours), numpy_weights(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} after a step")
