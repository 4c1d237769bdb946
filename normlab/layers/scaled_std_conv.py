"""Scaled weight-standardized convolutions: ScaledStdConv (Brock et al., 2021),
the Normalizer-Free networks' convolution (timm's ``ScaledStdConv2d``).

Like :mod:`normlab.layers.std_conv`, drop-in subclasses of
``keras.layers.Conv1D/2D/3D`` whose kernel is standardized over its fan-in
at every call; here it is also scaled by a learned per-channel gain and the
fixed ``gamma / sqrt(fan_in)``, so unit-variance inputs keep unit variance
without any activation normalization.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import keras
from keras import initializers

from normlab.layers.base import keras_object
from normlab.layers.std_conv import _conv_args, _doc, _replacement, _WeightStandardization
from normlab.ops.validate import ArgumentTypeError, check_real, error_message
from normlab.types import Constraint, Initializer, Regularizer, Shape, Tensor


class _ScaledWeightStandardization(_WeightStandardization):
    """Mixin: standardized kernel times a learned gain and ``gamma / sqrt(fan_in)``."""

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str | Callable[[Tensor], Tensor] | None = None,
        use_bias: bool = True,
        kernel_initializer: Initializer = "glorot_uniform",
        bias_initializer: Initializer = "zeros",
        kernel_regularizer: Regularizer = None,
        bias_regularizer: Regularizer = None,
        activity_regularizer: Regularizer = None,
        kernel_constraint: Constraint = None,
        bias_constraint: Constraint = None,
        epsilon: float = 1e-6,
        gamma: float = 1.0,
        gain_initializer: Initializer = "ones",
        **kwargs: Any,
    ) -> None:
        super().__init__(**_conv_args(locals()), epsilon=epsilon, **kwargs)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise ArgumentTypeError(
                error_message(
                    "gamma",
                    "a float (the fixed gain of the activation that follows)",
                    f"gamma={gamma!r} of type {type(gamma).__name__}",
                    "Pass gamma=1.0 for a linear layer, or the NF-Net gain of the activation "
                    "(about 1.7139 for ReLU).",
                )
            )
        # finite and > 0: nan/inf gave NaN outputs, 0 a layer whose output is its bias
        self.gamma: float = check_real("gamma", gamma, minimum=0.0, strict=True, example="1.7139")
        self.gain_initializer: Any = keras_object("initializer", "gain_initializer", gain_initializer)

    def build(self, input_shape: Shape) -> None:
        # With lora_rank set, Keras' build ends in enable_lora(), which locks
        # the layer against new weights: LoRA is enabled after the gain, as a
        # later enable_lora() call does (the weights' order is the same).
        lora_rank = getattr(self, "lora_rank", None)  # (Keras' attribute: untyped)
        self.lora_rank = None
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer=self.gain_initializer, trainable=True
        )
        if lora_rank:
            self.enable_lora(lora_rank, lora_alpha=self.lora_alpha)
        fan_in = 1
        for d in self._kernel.shape[:-1]:
            fan_in *= int(d)
        self.fan_in = fan_in

    def _gain(self) -> Tensor:
        return self.gain.value * (self.gamma * self.fan_in ** -0.5)

    # Keras' convolutions save exactly [kernel, bias]; the gain follows them.
    def _gain_key(self) -> str:
        return str(2 if self.use_bias else 1)

    def save_own_variables(self, store: dict[str, Any]) -> None:
        super().save_own_variables(store)
        if self.built:
            store[self._gain_key()] = self.gain

    def load_own_variables(self, store: dict[str, Any]) -> None:
        super().load_own_variables(store)
        if self.built:
            self.gain.assign(store[self._gain_key()])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "gain_initializer": initializers.serialize(self.gain_initializer),
        }


_SCALED_EXTRA = """
        gamma: fixed gain of the activation that follows (NF-Nets pass e.g.
            about 1.7139 for ReLU). Default 1.0.
        gain_initializer: initializer of the learned per-channel gain.
            Default "ones" (timm's ``gain_init=1.0``)."""


_SCALED_FORMULA = """
    For each output channel, the kernel's mean and variance are taken over
    its fan-in, then scaled by a learned per-channel ``gain`` and the fixed
    ``gamma / sqrt(fan_in)`` (timm's ``ScaledStdConv2d``):

        w_hat = (w - mean) / sqrt(var + epsilon) * gain * gamma / sqrt(fan_in)
        y = conv(x, w_hat) + bias

    so that, for unit-variance inputs, outputs keep unit variance without
    any activation normalization (Normalizer-Free networks).
"""


_SCALED_REFERENCE = """
    Reference:
        Brock, De, Smith & Simonyan, "Characterizing signal propagation to
        close the performance gap in unnormalized ResNets", ICLR 2021.
        https://arxiv.org/abs/2101.08692
    """


@keras.saving.register_keras_serializable(package="normlab")
class ScaledStdConv1D(_ScaledWeightStandardization, keras.layers.Conv1D):
    __doc__ = (
        "1-D convolution with scaled weight standardization (NF-Nets).\n"
        + _SCALED_FORMULA
        + _doc(causal=' or "causal"', extra=_SCALED_EXTRA)
        + """

    Example:
        >>> import numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 16, 3)).astype("float32")
        >>> tuple(normlab.layers.ScaledStdConv1D(4, 3, padding="same")(x).shape)
        (2, 16, 4)
"""
        + _SCALED_REFERENCE
    )


@keras.saving.register_keras_serializable(package="normlab")
class ScaledStdConv2D(_ScaledWeightStandardization, keras.layers.Conv2D):
    __doc__ = (
        "2-D convolution with scaled weight standardization (NF-Nets, timm's ScaledStdConv2d).\n"
        + _SCALED_FORMULA
        + _doc(extra=_SCALED_EXTRA)
        + """

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(64, 8, 8, 16)).astype("float32")
        >>> conv = normlab.layers.ScaledStdConv2D(32, 3, padding="same", use_bias=False)
        >>> y = keras.ops.convert_to_numpy(conv(x))
        >>> conv.fan_in, conv.count_params()          # 3 * 3 * 16; kernel + gain
        (144, 4640)
        >>> bool(abs(y[:, 2:-2, 2:-2].std() - 1.0) < 0.1)   # variance preserved
        True
"""
        + _SCALED_REFERENCE
    )


@keras.saving.register_keras_serializable(package="normlab")
class ScaledStdConv3D(_ScaledWeightStandardization, keras.layers.Conv3D):
    __doc__ = (
        "3-D convolution with scaled weight standardization (NF-Nets).\n"
        + _SCALED_FORMULA
        + _doc(extra=_SCALED_EXTRA)
        + """

    Example:
        >>> import numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(1, 4, 4, 4, 2)).astype("float32")
        >>> tuple(normlab.layers.ScaledStdConv3D(3, 2)(x).shape)
        (1, 3, 3, 3, 3)
"""
        + _SCALED_REFERENCE
    )


_SCALED_STD_CONVS = {1: ScaledStdConv1D, 2: ScaledStdConv2D, 3: ScaledStdConv3D}


def scaled_weight_standardization(
    layer: keras.layers.Layer | None = None, epsilon: float = 1e-6, gamma: float = 1.0,
    gain_initializer: Initializer = "ones", **kwargs: Any,
) -> ScaledStdConv1D | ScaledStdConv2D | ScaledStdConv3D:
    """Conv modifier, not an activation norm: the ScaledStdConv twin of the convolution given as ``layer=``.

    Returns a new, unbuilt :class:`ScaledStdConv1D`/``2D``/``3D`` with
    ``layer``'s configuration (weights are not copied); the registry's
    factory for ``"scaled_weight_std"``.
    """
    return _replacement(
        "scaled_weight_std", layer, _SCALED_STD_CONVS,
        epsilon=epsilon, gamma=gamma, gain_initializer=gain_initializer, **kwargs,
    )
