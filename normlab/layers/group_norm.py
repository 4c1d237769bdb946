"""GroupNormalization (Wu & He, 2018)."""

from __future__ import annotations

from typing import Any

import keras

from normlab import ops
from normlab.layers.base import Normalization
from normlab.ops.validate import check_groups, require_spatial, resolve_groups
from normlab.types import Constraint, Initializer, Regularizer, Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class GroupNormalization(Normalization):
    """Group normalization: normalizes each sample over groups of channels.

    The channels on ``axis`` are split into ``groups`` groups; each sample's
    mean and variance are computed per group, over the group's channels and
    all spatial positions, so the result does not depend on the batch size:

        y = (x - mean_group) / sqrt(var_group + epsilon) * gamma + beta

    with ``gamma`` and ``beta`` learned per channel. ``groups=1`` normalizes
    over all channels and positions (LayerNorm with per-channel affine);
    ``groups=-1`` (or the channel count) gives instance normalization.
    A drop-in for ``tfa.layers.GroupNormalization`` and
    ``keras.layers.GroupNormalization``, with the same arguments and defaults.

    Args:
        groups: number of groups, a divisor of the channel count; -1 for one
            group per channel. Default 32.
        axis: the channel axis; any axis but the batch axis. Default -1
            (channels-last); use 1 for channels-first.
        epsilon: small float added to the variance. Default 1e-3.
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32")
        >>> layer = normlab.layers.GroupNormalization(groups=5, axis=3)
        >>> y = layer(x)
        >>> layer.count_params()                       # gamma and beta, 10 each
        20
        >>> ln = normlab.layers.LayerNormalization(axis=[1, 2, 3], scale=False, center=False)
        >>> gn1 = normlab.layers.GroupNormalization(groups=1, scale=False, center=False)
        >>> to_numpy = keras.ops.convert_to_numpy
        >>> bool(np.allclose(to_numpy(gn1(x)), to_numpy(ln(x)), atol=1e-5))  # one group == LayerNorm
        True

    Reference:
        Wu & He, "Group Normalization", ECCV 2018. https://arxiv.org/abs/1803.08494
    """

    def __init__(
        self,
        groups: int = 32,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self.groups = check_groups(groups)

    def build(self, input_shape: Shape) -> None:
        _, channels = self.build_channel_axis(input_shape)
        self._groups = resolve_groups(self.groups, channels, self.axis)
        if self._groups == channels:  # one value per group without a spatial axis: all zeros
            require_spatial(input_shape, "instance normalization (one group per channel)")
        self.add_affine((channels,))

    def call(self, inputs: Tensor) -> Tensor:
        y = ops.group_norm(
            self.float_input(inputs),
            groups=self._groups,
            axis=self._channel_axis,
            gamma=self.gamma,
            beta=self.beta,
            epsilon=self.epsilon,
        )
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups}
