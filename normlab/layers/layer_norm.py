"""LayerNormalization (Ba et al., 2016)."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from normlab import ops
from normlab.layers.base import Normalization
from normlab.ops.axes import feature_param
from normlab.ops.validate import check_bool
from normlab.types import Axis, Constraint, Initializer, Regularizer, Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class LayerNormalization(Normalization):
    """Layer normalization: normalizes each sample over the given feature axes.

    For every sample, the mean and variance are taken over ``axis`` (one axis
    or several), and every other axis keeps its own statistics:

        y = (x - mean) / sqrt(var + epsilon) * gamma + beta

    with ``gamma`` and ``beta`` of the shape of the input at ``axis``
    (an elementwise affine). ``axis=-1`` is the transformer convention;
    ``axis=[1, 2, 3]`` normalizes a whole image. ``axis=1`` on an NHWC tensor
    normalizes over H alone, as ``keras.layers.LayerNormalization(axis=1)`` does.
    A drop-in for ``keras.layers.LayerNormalization``.

    Args:
        axis: an int or a list of ints, never the batch axis. Default -1.
        epsilon: small float added to the variance. Default 1e-3.
        center: add a learned offset ``beta``. Default True.
        scale: multiply by a learned scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).
            ``rms_scaling=True`` (deprecated in Keras) is accepted with a
            warning and does what Keras does: ``x / sqrt(var + epsilon) * gamma``,
            not centered and with no ``beta``; it is not RMS normalization
            (use :class:`RMSNormalization`).

    Like Keras' layer, it accepts inputs of another rank than the one it was
    built on, as long as the normalized axes keep their sizes (``axis=-1``
    built on ``(2, 2, 2)`` accepts ``(10, 2, 2, 2)``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32")
        >>> layer = normlab.layers.LayerNormalization(axis=1)
        >>> y = layer(x)
        >>> layer.count_params()                       # gamma and beta over H=26
        52
        >>> bool(np.allclose(keras.ops.convert_to_numpy(y).mean(axis=1), 0, atol=1e-5))
        True

    Reference:
        Ba, Kiros & Hinton, "Layer Normalization", 2016. https://arxiv.org/abs/1607.06450
    """

    multi_axis = True

    def __init__(
        self,
        axis: Axis = -1,
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
        rms_scaling = check_bool("rms_scaling", kwargs.pop("rms_scaling", False))
        if rms_scaling:
            warnings.warn(
                "LayerNormalization(rms_scaling=True) is deprecated in Keras, and normlab keeps "
                "Keras' meaning for loading old models: inputs are divided by sqrt(variance + "
                "epsilon), without centering, then scaled by gamma (no beta). That is not RMS "
                "normalization; for it use normlab.layers.RMSNormalization.",
                UserWarning,
                stacklevel=2,
            )
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

        self.rms_scaling = rms_scaling

    def build(self, input_shape: Shape) -> None:
        shape = self.build_feature_axes(input_shape, weights=self.rms_scaling or self.scale or self.center)
        if self.rms_scaling:  # Keras' deprecated mode: gamma only
            self.add_affine(shape, scale=True, center=False)
        else:
            self.add_affine(shape)

    def call(self, inputs: Tensor) -> Tensor:
        x = self.float_input(inputs)
        axes = self.feature_axes(x)
        if self.rms_scaling:
            # Keras' rms_scaling=True: x / sqrt(var + epsilon) * gamma, not centered.
            _, _, variance = ops.shifted_moments(x, axes)
            gamma = feature_param(self.gamma, len(x.shape), axes, [x.shape[a] for a in axes])
            y = ops.normalize(x, 0.0, variance, gamma=gamma, epsilon=self.epsilon)
        else:
            y = ops.layer_norm(x, axis=axes, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.rms_scaling:
            config["rms_scaling"] = True
        return config
