"""A model holding every normlab layer, saved once per backend as a ``.keras`` fixture.

``test_keras_files.py`` loads the fixtures saved on every backend in each
backend's test run, in-process, and compares the outputs with the ones stored
beside them: files move between backends, and files written by an earlier
normlab keep loading. Regenerate the fixtures after a deliberate change to a
layer's config or weights (and say so in the changelog), with

    for b in tensorflow jax torch; do KERAS_BACKEND=$b python -m tests.layers.keras_files; done
"""

from __future__ import annotations

import pathlib

import keras
import numpy as np

import normlab

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
BACKENDS = ("tensorflow", "jax", "torch")
SHAPE = (2, 10, 10, 3)


def paths(backend: str, model: str = "every_layer") -> tuple[pathlib.Path, pathlib.Path]:
    """The ``.keras`` file of ``model`` (``"every_layer"`` or ``"ops"``) saved on
    ``backend``, and its input/output arrays."""
    return FIXTURES / f"{model}.{backend}.keras", FIXTURES / f"{model}.{backend}.npz"


def build_model() -> keras.Model:
    """Every normlab layer in one functional model, with non-trivial weights."""
    keras.utils.set_random_seed(1)
    random = dict(gamma_initializer="random_uniform", beta_initializer="random_normal")
    inputs = keras.Input(SHAPE[1:])
    h = keras.layers.Conv2D(8, 3)(inputs)
    h = normlab.GroupNormalization(groups=4, **random)(h)
    h = normlab.InstanceNormalization(**random)(h)
    h = normlab.BatchNormalization(moving_mean_initializer="random_uniform",
                                   moving_variance_initializer="ones", **random)(h)
    h = normlab.LayerNormalization(axis=[1, 2])(h)
    h = normlab.RMSNormalization(gamma_initializer="random_uniform")(h)
    h = normlab.FilterResponseNormalization(use_tlu=True, learned_epsilon=True, **random)(h)
    h = normlab.EvoNormB0(**random)(h)
    h = normlab.EvoNormS0(groups=4, **random)(h)
    h = normlab.SwitchableNormalization(mean_weights_initializer="random_normal", **random)(h)
    h = normlab.LocalResponseNormalization(size=3)(h)
    h = normlab.DynamicTanh(alpha_init_value=0.8, **random)(h)
    h = normlab.AdaptiveInstanceNormalization(epsilon=1e-3)([h, keras.layers.Conv2D(8, 5)(inputs)])
    h = normlab.TLU(tau_initializer="random_normal")(h)
    h = normlab.WeightNormalization(keras.layers.Conv2D(8, 1), data_init=False)(h)
    h = normlab.SpectralNormalization(keras.layers.Conv2D(8, 1))(h)
    h = normlab.StdConv2D(8, 3)(h)
    h = normlab.ScaledStdConv2D(8, 1, gamma=1.7)(h)
    h = normlab.WeightNormalization(keras.layers.Dense(4), data_init=False)(keras.layers.Flatten()(h))
    return keras.Model(inputs, h)


def build_ops_model() -> keras.Model:
    """normlab's ops on ``keras.Input``'s symbolic tensors: a graph of ``NormOp`` nodes."""
    from normlab import ops

    keras.utils.set_random_seed(1)
    inputs = keras.Input(SHAPE[1:])
    h = keras.layers.Conv2D(8, 3)(inputs)
    h = ops.group_norm(h, 4, gamma=np.linspace(0.5, 2.0, 8).astype("float32"))
    h = ops.batch_norm(h, training=True)
    h = ops.layer_norm(h, axis=[1, 2, 3], epsilon=1e-5)
    mean, variance = ops.moments(h, [1, 2])
    return keras.Model(inputs, [ops.rms_norm(h), mean, variance])


MODELS = {"every_layer": build_model, "ops": build_ops_model}


def main() -> None:
    backend = keras.backend.backend()
    x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    FIXTURES.mkdir(exist_ok=True)
    for name, build in MODELS.items():
        model = build()
        y = [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(model(x, training=False))]
        model_path, data_path = paths(backend, name)
        model.save(model_path)
        np.savez(data_path, x=x, **({"y": y[0]} if len(y) == 1 else {f"y{i}": t for i, t in enumerate(y)}))
        print(f"wrote {model_path.name} and {data_path.name}")


if __name__ == "__main__":
    main()
