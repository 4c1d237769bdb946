"""ScaledStdConv: its weights file layout, and the registry's standardized twins' defaults."""

import keras
import numpy as np
import pytest
from keras import ops

import normlab

X = np.random.default_rng(0).normal(1.0, 2.0, size=(2, 6, 6, 4)).astype("float32")  # NHWC


@pytest.mark.parametrize("use_bias", [False, True])
def test_scaled_std_conv_weights_file_keeps_the_gain_after_keras_weights(use_bias, tmp_path):
    """The gain is stored right after Keras' convolution weights ([kernel, bias]
    or [kernel]) and is restored with them."""
    layer = normlab.ScaledStdConv2D(
        4, 3, use_bias=use_bias, gain_initializer="random_uniform", bias_initializer="random_normal"
    )
    layer(X)
    store = {}
    layer.save_own_variables(store)
    assert sorted(store) == (["0", "1", "2"] if use_bias else ["0", "1"])
    np.testing.assert_array_equal(ops.convert_to_numpy(store[str(len(store) - 1)]), ops.convert_to_numpy(layer.gain))
    model = keras.Sequential([keras.Input(X.shape[1:]), layer])
    model.save_weights(tmp_path / "scaled.weights.h5")
    fresh = keras.Sequential([keras.Input(X.shape[1:]), normlab.ScaledStdConv2D(4, 3, use_bias=use_bias)])
    fresh.load_weights(tmp_path / "scaled.weights.h5")
    np.testing.assert_array_equal(ops.convert_to_numpy(fresh.layers[0].gain), ops.convert_to_numpy(layer.gain))
    np.testing.assert_allclose(ops.convert_to_numpy(fresh(X)), ops.convert_to_numpy(model(X)), atol=1e-6)


def test_registry_twins_take_the_classes_defaults():
    """Built from the registry without arguments, the twins are the classes' defaults
    (epsilon 1e-6, gamma 1.0, gain "ones"): their configs match the directly built layers'."""
    for name, cls in (("weight_std", normlab.StdConv2D), ("scaled_weight_std", normlab.ScaledStdConv2D)):
        twin = normlab.get(name, layer=keras.layers.Conv2D(4, 3, name="c"))
        assert twin.get_config() == cls(4, 3, name="c").get_config()
        assert twin.epsilon == 1e-6


def test_registry_twins_check_the_arguments_given_as_their_constructors_do():
    """Built through Keras' from_config, a twin took an initializer of None
    from the caller (a random gain or bias, as a saved config may hold) and
    turned every constructor error into a TypeError behind a dump of the config."""
    conv = keras.layers.Conv2D(8, 3)
    for spec, pattern in (("scaled_weight_std(gain_initializer=None)", r"Invalid `gain_initializer`"),
                          ("weight_std(bias_initializer=None)", r"Invalid `bias_initializer`"),
                          ("scaled_weight_std(gamma=0)", r"^Invalid `gamma`: expected a number > 0\.0"),
                          ("weight_std(epsilon=-1.0)", r"^Invalid `epsilon`: expected a non-negative float")):
        with pytest.raises(ValueError, match=pattern):
            normlab.get(spec, layer=conv)
    # The convolution's own settings read as Keras reads them: an initializer of None is glorot_uniform.
    plain = keras.layers.Conv2D(8, 3, bias_initializer=None, dtype="mixed_bfloat16", name="c")
    twin = normlab.get("scaled_weight_std(gamma=2.0)", layer=plain)
    assert (twin.gamma, twin.name, twin.dtype_policy.name) == (2.0, "c", "mixed_bfloat16")
    assert twin.get_config()["bias_initializer"]["class_name"] == "GlorotUniform"
