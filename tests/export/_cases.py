"""The layers of the export matrix and the models that hold them.

One case per entry of :func:`normlab.registry` (LayerNormalization twice:
over the channels, ``LN(-1)``, and over ``[1, 2, 3]``), each in the
inference configuration a deployed model runs. A case's branch is

    Input(8, 8, 3) -> Conv2D(8, 3) -> norm -> Flatten          (activation norms)
    Input(8, 8, 3) -> wrapper(Conv2D(8, 3)) -> Flatten          (kernel wrappers)
    Input(8, 8, 3) -> [Conv2D(8, 3), Conv2D(8, 5)] -> AdaIN -> Flatten  (content, style)

so every normalized activation is compared, not a pooled summary of them.
:func:`full_model` puts every branch side by side on one input and
concatenates them; :func:`branches` takes some of them (same layers and
weights) as a model of their own: many for the one export per backend and
format, one for a layer exported alone (so that it reports its own error). Weights are
perturbed away from their initial values (ones, zeros) so that a dropped
scale, shift or moving statistic shows up as a difference.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import normlab

INPUT_SHAPE = (8, 8, 3)
CHANNELS = 8
BATCH = 2
#: Outputs per sample of one branch: a valid 3x3 conv leaves 6x6 positions.
BRANCH_SIZE = 6 * 6 * CHANNELS


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer configuration: a registry spec; its kind says how the branch calls it."""

    id: str
    spec: str

    @property
    def kind(self) -> str:
        """The registry's kind: ``"activation"``, ``"kernel"`` (wraps the conv) or ``"two-input"``."""
        return normlab.registry()[self.name].kind

    @property
    def name(self) -> str:
        """The registry name, e.g. ``"layer"`` for ``"layer(axis=[1, 2, 3])"``."""
        return self.spec.split("(")[0]

    def branch(self, inputs):
        """The branch's output for the Keras tensor ``inputs``."""
        name = self.id.replace("-", "_")
        conv = keras.layers.Conv2D(CHANNELS, 3, name=f"{name}_conv")
        if self.kind == "kernel":
            h = normlab.get(self.spec, layer=conv, name=name)(inputs)
        elif self.kind == "two-input":  # the style: features of another spatial size (4x4) from the same images
            style = keras.layers.Conv2D(CHANNELS, 5, name=f"{name}_style_conv")(inputs)
            h = normlab.get(self.spec, name=name)([conv(inputs), style])
        else:
            h = normlab.get(self.spec, name=name)(conv(inputs))
        return keras.layers.Flatten(name=f"{name}_flatten")(h)


CASES = (
    Case("group", "group(groups=4)"),
    Case("instance", "instance"),
    Case("layer", "layer"),
    Case("layer-3-axes", "layer(axis=[1, 2, 3])"),
    # Over a non-trailing axis, TensorFlow's fast path once chose between full-size
    # tensors with tf.cond, which OpenVINO's CPU plugin computed wrong (off by 2e2 or NaN).
    Case("layer-axis-1", "layer(axis=1)"),
    Case("batch", "batch"),
    Case("none", "none"),
    Case("rms", "rms"),
    Case("frn", "frn(use_tlu=True)"),
    Case("evonorm_b0", "evonorm_b0"),
    Case("evonorm_s0", "evonorm_s0(groups=4)"),
    Case("switchable", "switchable"),
    Case("lrn", "lrn(size=3)"),
    Case("dyt", "dyt"),
    Case("adain", "adain"),
    Case("weight_norm", "weight_norm"),
    Case("spectral_norm", "spectral_norm"),
    Case("weight_std", "weight_std"),
    Case("scaled_weight_std", "scaled_weight_std(gamma=1.7)"),
)
BY_ID = {case.id: case for case in CASES}
IDS = [case.id for case in CASES]


def inputs(batch: int = BATCH, seed: int = 0) -> np.ndarray:
    """Test inputs with an offset and a spread, float32, shape ``(batch, 8, 8, 3)``."""
    return np.random.default_rng(seed).normal(0.5, 2.0, size=(batch,) + INPUT_SHAPE).astype("float32")


def _perturb(model: keras.Model, seed: int) -> None:
    """Scales every float weight by U(0.5, 1.5) and moves its zeros by N(0, 0.5):
    scales and variances stay positive, shifts and means become non-zero."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if not keras.backend.is_float_dtype(w.dtype):
            continue  # weight norm's `initialized` flag
        value = np.asarray(keras.ops.convert_to_numpy(w), np.float64)
        moved = value * rng.uniform(0.5, 1.5, value.shape) + np.where(value == 0, rng.normal(0, 0.5, value.shape), 0)
        w.assign(moved.astype(w.dtype))


def full_model() -> keras.Model:
    """Every case as a branch on one input, outputs concatenated in :data:`CASES` order;
    built with one inference call (weight norm's data-dependent init runs here), then perturbed."""
    keras.utils.set_random_seed(0)
    x = keras.Input(INPUT_SHAPE, name="images")
    model = keras.Model(x, keras.layers.Concatenate(name="branches")([case.branch(x) for case in CASES]),
                        name="every_norm")
    model(inputs(seed=7), training=False)  # the test batch's shape: JAX's eager op cache is reused
    _perturb(model, seed=3)
    return model


def branches(full: keras.Model, cases) -> keras.Model:
    """The branches of ``cases`` in ``full`` (same layers, same weights) as a model of their own."""
    outputs = [full.get_layer(f"{case.id.replace('-', '_')}_flatten").output for case in cases]
    if len(outputs) == 1:
        return keras.Model(full.input, outputs[0], name=f"{cases[0].id.replace('-', '_')}_alone")
    return keras.Model(full.input, keras.layers.Concatenate(name="branches")(outputs), name="every_norm")


def split(output: np.ndarray, cases) -> dict[str, np.ndarray]:
    """A combined model's output, cut into each case's branch."""
    output = np.asarray(output)
    assert output.shape[-1] == BRANCH_SIZE * len(cases), (output.shape, len(cases))
    return {case.id: output[:, i * BRANCH_SIZE:(i + 1) * BRANCH_SIZE] for i, case in enumerate(cases)}


def uncovered_names() -> set:
    """Registered norms no case builds (a newly registered norm belongs in :data:`CASES`)."""
    return set(normlab.registry()) - {case.name for case in CASES}
