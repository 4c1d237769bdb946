"""LocalResponseNormalization: harness, float64 reference, parity with torch.nn.LocalResponseNorm, errors."""

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


def test_harness():
    run_layer_test(normlab.LocalResponseNormalization, dict(size=3, alpha=1.0), LAST4, expected_trainable=0,
                   expected_params=0)


@pytest.mark.parametrize("kwargs, shape", [(dict(), LAST4), (dict(size=4, alpha=2.0, beta=0.5, k=2.0, axis=1), FIRST3)])
def test_matches_reference(kwargs, shape):
    x = np.random.default_rng(0).normal(0.0, 3.0, size=shape).astype("float32")
    y = ops.convert_to_numpy(normlab.LocalResponseNormalization(**kwargs)(x))
    np.testing.assert_allclose(y, reference.local_response_norm(x, **kwargs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, shape", [(5, FIRST3), (2, LAST4)])  # channels on axis 1, as in PyTorch
def test_parity_with_torch(size, shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(0.0, 3.0, size=shape).astype("float32")
    expected = torch.nn.LocalResponseNorm(size, alpha=0.1, beta=0.75, k=1.0)(torch.from_numpy(x)).numpy()
    ours = normlab.LocalResponseNormalization(size=size, alpha=0.1, beta=0.75, k=1.0, axis=1)
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), expected, rtol=1e-5, atol=1e-6)


def test_defaults_are_torch_defaults_and_config_round_trips():
    layer = normlab.LocalResponseNormalization()
    config = layer.get_config()
    assert {k: config[k] for k in ("size", "alpha", "beta", "k", "axis")} == dict(size=5, alpha=1e-4, beta=0.75, k=1.0, axis=-1)
    assert normlab.LocalResponseNormalization.from_config(config).get_config() == config


def test_a_built_layer_takes_the_rank_and_channels_it_was_built_for():
    layer = normlab.LocalResponseNormalization(size=3, axis=1)
    layer.build((2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"expected ndim=4, found ndim=3"):
        layer(np.zeros((2, 6, 4), "float32"))
    with pytest.raises(ValueError, match=r"expected axis 1 of input shape to have value 6"):
        layer(np.zeros((2, 5, 4, 4), "float32"))


def test_registry():
    layer = normlab.get("lrn(size=3, k=2.0)")
    assert isinstance(layer, normlab.LocalResponseNormalization) and (layer.size, layer.k) == (3, 2.0)


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ValueError, match=r"Invalid `size`: expected a positive integer \(the number of channels in the "
                                         r"window\)\. Received: size=0\. Pass an int such as size=5"):
        normlab.LocalResponseNormalization(size=0)
    with pytest.raises(ValueError, match=r"Invalid `k`: expected a number > 0\.0\. Received: k=-1\.0\. Use a value such as k=1\.0"):
        normlab.LocalResponseNormalization(k=-1.0)
    # Refused when the layer is made, as the op refuses them, not at its first call.
    with pytest.raises(ValueError, match=r"Invalid `alpha`: expected a number >= 0\.0\. Received: alpha=-1\.0"):
        normlab.LocalResponseNormalization(alpha=-1.0)
    with pytest.raises(TypeError, match=r"Invalid `beta`: expected a real number\. Received: beta='0\.75' of type str"):
        normlab.LocalResponseNormalization(beta="0.75")
    with pytest.raises(TypeError, match=r"Invalid `axis`: expected a single int \(the channel axis\) for LocalResponseNormalization\. Received: axis=\[1, 2\]"):
        normlab.LocalResponseNormalization(axis=[1, 2])
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected axes in \[-3, 2\] for an input of rank 3\. "
                                         r"Received: axis=5 for an input of rank 3"):
        normlab.LocalResponseNormalization(axis=5)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected feature axes with a known size, since the window's "
                                         r"sums are built per channel\. Received: axis=-1 and input shape \(None, 4, None\)"):
        normlab.LocalResponseNormalization()(keras.Input((4, None)))  # (it has no weights)
