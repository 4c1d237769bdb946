"""Every layer in :func:`normlab.registry`, built for a small input: the
cases that the no-host-read checks (``tests/backends/test_no_host_sync.py``)
and the compile tests (``tests/compile``) run.

Activation norms see ``(batch, 6, 6, 8)`` (or a channels-first
``(batch, 8, 6, 6)``); the kernel wrappers (weight_norm, spectral_norm,
weight_std, scaled_weight_std) wrap a ``Conv2D(8, 3, padding="same")`` and
see ``(batch, 6, 6, 3)``. Layers that behave differently in training
appear once per mode. AdaIN, called on ``[content, style]``, gets the input
as its content and a crop of it, scaled and shifted, as its style (another
spatial size; gradients flow through both).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import normlab

CHANNELS = 8
SPATIAL = (6, 6)


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer configuration: a registry name, its arguments and how it is called."""

    id: str
    name: str
    kwargs: tuple = ()
    training: bool | None = None
    channels_first: bool = False

    @property
    def wraps_conv(self) -> bool:
        """A kernel wrapper, built around a conv of its own."""
        return normlab.registry()[self.name].kind == "kernel"

    @property
    def two_inputs(self) -> bool:
        """Called on ``[content, style]`` (AdaIN)."""
        return normlab.registry()[self.name].kind == "two-input"

    def build(self) -> keras.layers.Layer:
        kwargs = dict(self.kwargs)
        if self.wraps_conv:
            kwargs["layer"] = keras.layers.Conv2D(CHANNELS, 3, padding="same")
        return normlab.get(self.name, **kwargs)

    def input_shape(self, batch: int) -> tuple:
        if self.wraps_conv:
            return (batch,) + SPATIAL + (3,)
        if self.channels_first:
            return (batch, CHANNELS) + SPATIAL
        return (batch,) + SPATIAL + (CHANNELS,)

    def inputs(self, batch: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (offset + rng.normal(0.5, 2.0, size=self.input_shape(batch))).astype("float32")

    def cotangent(self, batch: int, seed: int = 1) -> np.ndarray:
        """A random output cotangent (the outputs have the activation norms' shape)."""
        shape = (batch, CHANNELS) + SPATIAL if self.channels_first else (batch,) + SPATIAL + (CHANNELS,)
        return np.random.default_rng(seed).normal(size=shape).astype("float32")

    def layer_input(self, x):
        """What the layer is called on for the input ``x``: ``x``, or AdaIN's ``[content, style]``."""
        if not self.two_inputs:
            return x
        crop = x[:, :, 1:5, 2:] if self.channels_first else x[:, 1:5, 2:, :]
        return [x, crop * 0.5 + 3.0]

    def call(self, layer, x):
        x = self.layer_input(x)
        return layer(x) if self.training is None else layer(x, training=self.training)


def _case(id, name, training=None, channels_first=False, **kwargs):
    return Case(id, name, tuple(sorted(kwargs.items())), training, channels_first)


CASES = [
    _case("group", "group", groups=4, gamma_initializer="random_uniform"),
    _case("group-channels-first", "group", groups=2, axis=1, channels_first=True),
    _case("instance", "instance", beta_initializer="random_normal"),
    _case("layer", "layer", gamma_initializer="random_uniform"),
    _case("layer-3-axes", "layer", axis=[1, 2, 3]),
    _case("batch-train", "batch", training=True),
    _case("batch-inference", "batch", training=False),
    _case("batch-channels-first-train", "batch", training=True, axis=1, channels_first=True),
    _case("batch-renorm-train", "batch", training=True, renorm=True),
    _case("none", "none"),
    _case("rms", "rms"),
    _case("frn", "frn", use_tlu=True),
    _case("evonorm_b0-train", "evonorm_b0", training=True),
    _case("evonorm_b0-inference", "evonorm_b0", training=False),
    _case("evonorm_s0", "evonorm_s0", groups=4),
    _case("switchable-train", "switchable", training=True),
    _case("switchable-inference", "switchable", training=False),
    _case("lrn", "lrn", size=3),
    _case("dyt", "dyt", gamma_initializer="random_uniform", beta_initializer="random_normal"),
    _case("dyt-channels-first", "dyt", axis=1, channels_first=True, alpha_init_value=0.2),
    _case("adain", "adain"),
    _case("adain-channels-first", "adain", axis=1, channels_first=True, epsilon=0.0),
    _case("weight_norm", "weight_norm", training=True),
    _case("weight_norm-no-data-init", "weight_norm", training=True, data_init=False),
    _case("spectral_norm-train", "spectral_norm", training=True),
    _case("spectral_norm-inference", "spectral_norm", training=False),
    _case("weight_std", "weight_std"),
    _case("scaled_weight_std", "scaled_weight_std"),
]

BY_ID = {case.id: case for case in CASES}


def uncovered_names() -> set:
    """Registered norms no case builds (a newly registered norm belongs in :data:`CASES`)."""
    return set(normlab.registry()) - {case.name for case in CASES}
