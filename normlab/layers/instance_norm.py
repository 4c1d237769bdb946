"""InstanceNormalization (Ulyanov et al., 2016)."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from normlab.layers.group_norm import GroupNormalization
from normlab.types import Constraint, Initializer, Regularizer


@keras.saving.register_keras_serializable(package="normlab")
class InstanceNormalization(GroupNormalization):
    """Instance normalization: normalizes each sample and channel over space.

    For every sample and channel, the mean and variance are taken over all
    spatial positions (all axes but the batch and channel axes):

        y = (x - mean_nc) / sqrt(var_nc + epsilon) * gamma + beta

    with ``gamma`` and ``beta`` learned per channel. Identical to
    ``GroupNormalization(groups=-1)``; a drop-in for
    ``tfa.layers.InstanceNormalization``.

    Args:
        axis: the channel axis; any axis but the batch axis. Default -1; use 1
            for channels-first.
        epsilon: small float added to the variance. Default 1e-3.
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        groups: accepted (from TF Addons code or configs) and ignored, with
            a warning unless it is -1, as TF Addons did. Default -1.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    The input needs at least one spatial axis (rank >= 3): with none, each
    statistic would cover one value and every output would be 0 (``beta``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32")
        >>> layer = normlab.layers.InstanceNormalization(
        ...     axis=3, beta_initializer="random_uniform", gamma_initializer="random_uniform")
        >>> tuple(layer(x).shape[1:]), layer.count_params()
        ((26, 26, 10), 20)
        >>> plain = normlab.layers.InstanceNormalization(center=False, scale=False)
        >>> gn = normlab.layers.GroupNormalization(groups=10, center=False, scale=False)
        >>> to_numpy = keras.ops.convert_to_numpy
        >>> bool(np.allclose(to_numpy(plain(x)), to_numpy(gn(x)), atol=1e-6))
        True

    Reference:
        Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing
        Ingredient for Fast Stylization", 2016. https://arxiv.org/abs/1607.08022
    """

    def __init__(
        self,
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
        groups: int = -1,
        **kwargs: Any,
    ) -> None:
        if groups != -1:  # TF Addons accepted it too, logging a warning whenever it was given
            warnings.warn(
                f"InstanceNormalization ignores groups={groups!r}: it always uses one group per "
                "channel (groups=-1), as tfa.layers.InstanceNormalization did. Use "
                "normlab.layers.GroupNormalization(groups=...) for other groupings.",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(
            groups=-1,
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
