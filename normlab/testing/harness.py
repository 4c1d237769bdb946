"""``run_layer_test``: the checks every normalization layer passes, in one call.

Modelled on Keras' own ``run_layer_test``: a new layer gets shape, weight,
config, serialization, saving, training and mixed-precision coverage in a
few lines of its test file.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any

import keras
import numpy as np
from keras import ops

from normlab.types import Tensor

BASE_LAYER_ARGS = {"name", "trainable", "dtype"}


def constructor_args(cls: type[keras.layers.Layer]) -> set[str]:
    """The named constructor arguments of a layer class (no ``**kwargs``)."""
    return {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _call(layer: keras.layers.Layer, x: Tensor, training: bool) -> Tensor:
    if "training" in inspect.signature(layer.call).parameters:
        return layer(x, training=training)
    return layer(x)


def run_layer_test(
    layer_cls: type[keras.layers.Layer],
    init_kwargs: dict[str, Any],
    input_shape: tuple[int, ...],
    *,
    expected_trainable: int,
    expected_non_trainable: int = 0,
    expected_params: int | None = None,
    seed: int = 0,
    check_mixed_precision: bool = True,
    check_saving: bool = True,
    atol: float = 1e-5,
) -> keras.layers.Layer:
    """Runs the standard checks on ``layer_cls(**init_kwargs)``.

    Checks: output shape equals input shape (eagerly and symbolically);
    weight counts; ``get_config`` holds exactly the constructor arguments
    plus the base layer's; ``from_config`` and Keras (de)serialization give
    a layer with the same outputs; a ``.keras`` round trip gives the same
    outputs; ``model.fit`` runs one step and changes the trainable weights;
    under ``mixed_float16`` the output is float16 and finite, and every
    floating-point weight float32.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_shape: a full input shape including the batch size.
        expected_trainable: number of trainable weight tensors.
        expected_non_trainable: number of non-trainable weight tensors. Default 0.
        expected_params: total parameter count, if given. Default None.
        seed: seed for the random input. Default 0.
        check_mixed_precision: run the mixed_float16 check. Default True.
        check_saving: run the ``.keras`` round trip. Default True.
        atol: tolerance for output comparisons. Default 1e-5.

    Returns:
        The built layer.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=input_shape).astype("float32")

    layer = layer_cls(**init_kwargs)
    y = ops.convert_to_numpy(_call(layer, x, training=False))
    assert y.shape == tuple(input_shape), f"output shape {y.shape} != input shape {input_shape}"
    assert np.isfinite(y).all(), "non-finite output"
    assert len(layer.trainable_weights) == expected_trainable, (
        f"{len(layer.trainable_weights)} trainable weights, expected {expected_trainable}"
    )
    assert len(layer.non_trainable_weights) == expected_non_trainable, (
        f"{len(layer.non_trainable_weights)} non-trainable weights, expected {expected_non_trainable}"
    )
    if expected_params is not None:
        assert layer.count_params() == expected_params, (
            f"{layer.count_params()} params, expected {expected_params}"
        )

    symbolic = layer_cls(**init_kwargs)(keras.Input(batch_shape=(None,) + tuple(input_shape[1:])))
    assert tuple(symbolic.shape[1:]) == tuple(input_shape[1:])

    config = layer.get_config()
    expected_keys = constructor_args(layer_cls) | BASE_LAYER_ARGS
    assert set(config) <= expected_keys | {"rms_scaling"}, (
        f"get_config has keys that are not constructor arguments: {sorted(set(config) - expected_keys)}"
    )
    missing = constructor_args(layer_cls) - set(config)
    assert not missing, f"get_config lacks constructor arguments: {sorted(missing)}"

    def same_outputs(other: keras.layers.Layer, label: str) -> None:
        _call(other, x, training=False)  # build
        other.set_weights(layer.get_weights())
        out = ops.convert_to_numpy(_call(other, x, training=False))
        np.testing.assert_allclose(out, y, atol=atol, err_msg=label)

    same_outputs(layer_cls.from_config(config), "from_config")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is layer_cls
    same_outputs(restored, "serialize/deserialize")

    model = keras.Sequential([keras.Input(input_shape[1:]), layer_cls(**init_kwargs)])
    if check_saving:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
            np.testing.assert_allclose(
                ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=atol,
                err_msg=".keras round trip",
            )

    if expected_trainable:
        before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = rng.normal(size=input_shape).astype("float32")
        model.fit(x, target, batch_size=input_shape[0], epochs=1, verbose=0)
        after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), "fit did not update weights"

    if check_mixed_precision:
        mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
        out = _call(mixed, x, training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16", out.dtype
        assert np.isfinite(ops.convert_to_numpy(out).astype("float32")).all()
        for w in mixed.weights:  # (a state that is not a float, a bool flag, keeps its dtype)
            dtype = keras.backend.standardize_dtype(w.dtype)
            assert dtype == "float32" or "float" not in dtype, f"{w.name} is {w.dtype}"
    return layer
