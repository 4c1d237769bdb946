"""LayerNormalization (Ba et al., 2016)."""

from __future__ import annotations

import keras

from normlab import ops
from normlab.layers.base import Normalization
from normlab.ops.axes import known_dims
from normlab.ops.validate import error_message


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
            ``rms_scaling=False`` from old Keras configs is accepted and ignored.

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
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        if kwargs.pop("rms_scaling", False):
            raise ValueError(
                error_message(
                    "rms_scaling",
                    "False: Keras deprecated rms_scaling=True because it scaled by the "
                    "variance rather than the root mean square",
                    "rms_scaling=True",
                    "Use RMS normalization instead of LayerNormalization(rms_scaling=True).",
                )
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

    def build(self, input_shape):
        self._axes = self.resolve_axes(input_shape)
        shape = known_dims(input_shape, self._axes, axis=self.axis)
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes=dict(zip(self._axes, shape))
        )
        self.add_affine(shape)

    def call(self, inputs):
        return ops.layer_norm(
            inputs, axis=self._axes, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon
        )
