"""SwitchableNormalization (Luo et al., 2018)."""

from __future__ import annotations

from typing import Any

import keras
from keras import initializers

from normlab import ops
from normlab.layers.base import Normalization, check_training, keras_object
from normlab.ops.validate import check_bool, check_momentum, require_spatial
from normlab.types import Constraint, Initializer, Regularizer, Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class SwitchableNormalization(Normalization):
    """Switchable normalization: learns how to mix instance, layer and batch statistics.

    Three sets of statistics are computed, each a mean and a (biased)
    variance: instance (per sample and channel, over the spatial axes),
    layer (per sample, over all non-batch axes) and batch (per channel, over
    the batch and spatial axes). They are mixed with softmax weights learned
    separately for the means and the variances:

        mean = sum_k softmax(mean_weights)_k * mean_k,   k in (instance, layer, batch)
        var  = sum_k softmax(variance_weights)_k * var_k
        y = (x - mean) / sqrt(var + epsilon) * gamma + beta

    In training (``training=True`` and the layer trainable) the batch
    statistics come from the batch and update moving averages
    (``moving = momentum * moving + (1 - momentum) * batch``); in inference,
    and whenever ``trainable=False``, the moving averages stand in for them,
    while the instance and layer statistics are always the input's own.
    With a (near) one-hot mix, e.g. logits ``(30, 0, 0)``, the layer equals
    InstanceNormalization, GroupNormalization(groups=1) (layer statistics,
    per-channel affine) or BatchNormalization, to float32 rounding.

    Args:
        axis: the channel axis; any axis but the batch axis. Default -1; 1 for
            channels-first. The input needs at least one spatial axis.
        momentum: weight the moving averages keep at each step (Keras
            convention; the authors' code uses 0.997). Default 0.99.
        epsilon: small float added to the mixed variance. Default 1e-3 (Keras'
            default for the three norms it mixes; the authors' code uses 1e-5).
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        mean_weights_initializer: initializer for the three mean-mixing logits
            (instance, layer, batch). Default "ones" (an even mix).
        variance_weights_initializer: same for the variance-mixing logits. Default "ones".
        moving_mean_initializer: initializer for the moving mean. Default "zeros".
        moving_variance_initializer: initializer for the moving variance. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        synchronized: in training, take the batch statistics over the global
            batch of a data-parallel step (every replica's samples), exactly
            as ``BatchNormalization(synchronized=True)`` does on each backend
            (see :mod:`normlab.distributed`); only the batch branch is
            affected (instance and layer statistics are per sample). Not
            under any distribution, identical to ``False``. Default False.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments:
        inputs: input tensor of rank >= 3.
        training: use batch statistics and update the moving ones. Default False.

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(4, 5, 5, 3)).astype("float32")
        >>> sn = normlab.layers.SwitchableNormalization(
        ...     mean_weights_initializer=keras.initializers.Constant([0.0, 0.0, 30.0]),
        ...     variance_weights_initializer=keras.initializers.Constant([0.0, 0.0, 30.0]))
        >>> bn = normlab.layers.BatchNormalization()               # one-hot on batch stats == BN
        >>> a, b = sn(x, training=True), bn(x, training=True)
        >>> bool(np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5))
        True
        >>> [w.name for w in sn.weights]
        ['gamma', 'beta', 'mean_weights', 'variance_weights', 'moving_mean', 'moving_variance']

    Reference:
        Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via
        Switchable Normalization", ICLR 2019. https://arxiv.org/abs/1806.10779
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        mean_weights_initializer: Initializer = "ones",
        variance_weights_initializer: Initializer = "ones",
        moving_mean_initializer: Initializer = "zeros",
        moving_variance_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        synchronized: bool = False,
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
        self.momentum = check_momentum(momentum, owner=type(self).__init__)
        self.mean_weights_initializer = keras_object(
            "initializer", "mean_weights_initializer", mean_weights_initializer)
        self.variance_weights_initializer = keras_object(
            "initializer", "variance_weights_initializer", variance_weights_initializer)
        self.moving_mean_initializer = keras_object(
            "initializer", "moving_mean_initializer", moving_mean_initializer)
        self.moving_variance_initializer = keras_object(
            "initializer", "moving_variance_initializer", moving_variance_initializer)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape: Shape) -> None:
        require_spatial(input_shape, "SwitchableNormalization")
        _, channels = self.build_channel_axis(input_shape)
        self.add_affine((channels,))
        self.mean_weights = self.add_weight(
            name="mean_weights", shape=(3,), initializer=self.mean_weights_initializer, trainable=True,
            autocast=False,
        )
        self.variance_weights = self.add_weight(
            name="variance_weights", shape=(3,), initializer=self.variance_weights_initializer,
            trainable=True, autocast=False,
        )
        self.moving_mean = self.add_statistic("moving_mean", (channels,), self.moving_mean_initializer)
        self.moving_variance = self.add_statistic(
            "moving_variance", (channels,), self.moving_variance_initializer)

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        training = check_training(training)
        x = self.float_input(inputs)
        common: dict[str, Any] = dict(axis=self._channel_axis, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        if not (training and self.trainable):
            return self.compute_output(ops.switchable_norm(
                x, self.mean_weights, self.variance_weights, self.moving_mean, self.moving_variance,
                **common,
            ))
        replica_sum = self.replica_sum(self.synchronized)
        if self.empty_batch(x, replica_sum):
            return self.compute_output(x)
        y, mean, variance = ops.switchable_norm(
            x, self.mean_weights, self.variance_weights, training=True, return_stats=True,
            replica_sum=replica_sum, **common,
        )
        self.update_moving(x, ((self.moving_mean, mean, self.momentum),
                               (self.moving_variance, variance, self.momentum)), replica_sum)
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "mean_weights_initializer": initializers.serialize(self.mean_weights_initializer),
            "variance_weights_initializer": initializers.serialize(self.variance_weights_initializer),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "synchronized": self.synchronized,
        }
