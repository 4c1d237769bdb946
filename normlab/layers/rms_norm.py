"""RMSNormalization (Zhang & Sennrich, 2019)."""

from __future__ import annotations

from typing import Any

import keras

from normlab import ops
from normlab.layers.base import Normalization
from normlab.types import Axis, Constraint, Initializer, Regularizer, Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class RMSNormalization(Normalization):
    """Root mean square normalization: rescales each sample by its RMS, no centering.

    For every sample, the mean of squares is taken over ``axis`` (one axis or
    several) and the input is divided by its root; nothing is subtracted:

        y = x / sqrt(mean(x^2) + epsilon) * gamma  (+ beta if center=True)

    with ``gamma`` (and ``beta``) of the shape of the input at ``axis``.
    Cheaper than LayerNormalization (one reduction instead of two) and
    invariant to rescaling of the input, but not to shifts. A drop-in for
    ``keras.layers.RMSNormalization(axis=-1, epsilon=1e-6)``: same defaults,
    same result, and one weight, so ``set_weights`` carries over either way.
    As in Keras, the built layer's ``scale`` attribute is that weight (None
    when ``scale=False``); ``gamma`` is the same variable, as in normlab's
    other norms. The ``scale`` argument is the switch, as in LayerNormalization.

    Args:
        axis: an int or a list of ints, never the batch axis. Default -1.
        epsilon: small float added to the mean square. Default 1e-6 (as Keras).
        center: add a learned offset ``beta`` (not in the paper). Default False.
        scale: multiply by a learned scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
        >>> y = keras.ops.convert_to_numpy(normlab.layers.RMSNormalization()(x))
        >>> bool(np.allclose(np.mean(np.square(y), axis=-1), 1.0, atol=1e-4))
        True
        >>> y_keras = keras.ops.convert_to_numpy(keras.layers.RMSNormalization()(x))
        >>> bool(np.allclose(y, y_keras, atol=1e-6))                 # same as Keras
        True
        >>> layer = normlab.layers.RMSNormalization()
        >>> _ = layer(x)
        >>> layer.scale is layer.gamma, tuple(layer.scale.shape), layer.get_config()["scale"]
        (True, (8,), True)

    Reference:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
        https://arxiv.org/abs/1910.07467
    """

    multi_axis = True

    def __init__(
        self,
        axis: Axis = -1,
        epsilon: float = 1e-6,
        center: bool = False,
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
        # Keras' RMSNormalization names its weight `scale`: once built, the
        # attribute is that weight (Keras code reads `layer.scale`); the switch
        # stays in `use_scale` and in the config's "scale".
        self.use_scale: bool = self.__dict__.pop("scale")
        self.scale = None

    def build(self, input_shape: Shape) -> None:
        shape = self.build_feature_axes(input_shape, weights=self.use_scale or self.center)
        self.add_affine(shape, scale=self.use_scale, gamma_name="scale")  # Keras' variable name (its path)
        self.scale = self.gamma

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.use_scale}

    def call(self, inputs: Tensor) -> Tensor:
        x = self.float_input(inputs)
        y = ops.rms_norm(x, axis=self.feature_axes(x), gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        return self.compute_output(y)
