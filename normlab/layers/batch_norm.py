"""BatchNormalization (Ioffe & Szegedy, 2015)."""

from __future__ import annotations

import warnings

import keras
from keras import initializers

from normlab import ops
from normlab.layers.base import Normalization
from normlab.ops.axes import known_dims
from normlab.ops.validate import check_momentum, error_message


@keras.saving.register_keras_serializable(package="normlab")
class BatchNormalization(Normalization):
    """Batch normalization: normalizes each channel over the batch and space.

    In training (``training=True`` and the layer trainable), each channel's
    mean and variance are taken over the batch and all spatial positions,
    and moving averages are updated:

        y = (x - mean_c) / sqrt(var_c + epsilon) * gamma + beta
        moving_mean = momentum * moving_mean + (1 - momentum) * mean_c

    (likewise ``moving_variance`` with the biased batch variance ``var_c``).
    In inference, and whenever ``trainable=False`` (the Keras fine-tuning
    convention), the moving statistics are used instead. A drop-in for
    ``keras.layers.BatchNormalization``.

    Args:
        axis: the channel axis; any axis but the batch axis. Default -1; use 1
            for channels-first.
        momentum: weight the moving averages keep at each step (Keras
            convention; PyTorch's ``momentum=m`` is ``1 - m`` here). Default 0.99.
        epsilon: small float added to the variance. Default 1e-3.
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        moving_mean_initializer: initializer for the moving mean. Default "zeros".
        moving_variance_initializer: initializer for the moving variance. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        synchronized: accepted for compatibility with Keras. Today statistics
            are always computed on the batch each replica sees (per device),
            so ``True`` behaves like ``False`` and emits a warning. Default False.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments:
        inputs: input tensor.
        training: use batch statistics and update the moving ones. Default False.
        mask: optional boolean tensor of the input's shape without the channel
            axis (e.g. ``(batch, time)`` for sequences); masked-out positions
            do not count toward the batch statistics.

    Example:
        >>> import numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 26, 26, 10)).astype("float32")
        >>> layer = normlab.layers.BatchNormalization(axis=3)
        >>> y = layer(x, training=True)
        >>> len(layer.trainable_weights), len(layer.non_trainable_weights), layer.count_params()
        (2, 2, 40)
        >>> np.round(np.asarray(layer.moving_mean)[:2], 2)          # 0.99 * 0 + 0.01 * 3
        array([0.03, 0.03], dtype=float32)

    Reference:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015.
        https://arxiv.org/abs/1502.03167
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        synchronized=False,
        **kwargs,
    ):
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
        self.momentum = check_momentum(momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.synchronized = bool(synchronized)
        if self.synchronized:
            warnings.warn(
                "BatchNormalization(synchronized=True): cross-replica statistics are not "
                "implemented yet; each replica normalizes with its own batch statistics.",
                stacklevel=2,
            )

    def build(self, input_shape):
        (self._channel_axis,) = self.resolve_axes(input_shape)
        (channels,) = known_dims(input_shape, [self._channel_axis], axis=self.axis)
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={self._channel_axis: channels}
        )
        self.add_affine((channels,))
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(channels,),
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=(channels,),
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def _expand_mask(self, inputs, mask):
        if mask is None:
            return None
        if len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                error_message(
                    "mask",
                    "a tensor with one dimension less than the inputs (no channel axis)",
                    f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(inputs.shape)}",
                    "Pass a mask of shape inputs.shape without the channel axis, e.g. (batch, time).",
                )
            )
        return keras.ops.expand_dims(mask, self._channel_axis)

    def call(self, inputs, training=None, mask=None):
        common = dict(axis=self._channel_axis, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        if not (training and self.trainable):
            return ops.batch_norm(inputs, self.moving_mean, self.moving_variance, **common)
        y, mean, variance = ops.batch_norm(
            inputs, training=True, mask=self._expand_mask(inputs, mask), return_stats=True, **common
        )
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = keras.ops.cast(batch, moving.dtype)
            moving.assign(moving * self.momentum + batch * (1.0 - self.momentum))
        return y

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "synchronized": self.synchronized,
        }
