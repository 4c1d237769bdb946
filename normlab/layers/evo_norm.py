"""EvoNormB0 and EvoNormS0 (Liu et al., 2020): normalization and activation in one layer."""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import constraints, initializers, regularizers

from normlab import ops
from normlab.layers.base import Normalization, check_training, keras_object
from normlab.ops.arith import at_least
from normlab.ops.axes import is_traced_int
from normlab.ops.evo_norm import EVO_NORM_EPSILON_REASON
from normlab.ops.moments import size_as
from normlab.ops.validate import (
    check_bool,
    check_epsilon,
    check_groups,
    check_momentum,
    check_positive_int,
    divisors,
    error_message,
    require_spatial,
    resolve_groups,
)
from normlab.types import Constraint, Initializer, Regularizer, Shape, Tensor


class _EvoNorm(Normalization):
    """Shared weights of the EvoNorms: the affine plus a per-channel ``v``."""

    def __init__(
        self, *, v_initializer: Initializer, v_regularizer: Regularizer, v_constraint: Constraint, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.v_initializer = keras_object("initializer", "v_initializer", v_initializer)
        self.v_regularizer = keras_object("regularizer", "v_regularizer", v_regularizer)
        self.v_constraint = keras_object("constraint", "v_constraint", v_constraint)

    @staticmethod
    def check_epsilon(epsilon: object, owner: Callable[..., Any] | None = None) -> float:
        return check_epsilon(epsilon, positive=True, reason=EVO_NORM_EPSILON_REASON, owner=owner)

    def build_common(self, input_shape: Shape) -> int:
        _, channels = self.build_channel_axis(input_shape)
        self.add_affine((channels,))
        self.v = self.add_weight(
            name="v", shape=(channels,), initializer=self.v_initializer,
            regularizer=self.v_regularizer, constraint=self.v_constraint, trainable=True,
            autocast=False,
        )
        return channels

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "v_initializer": initializers.serialize(self.v_initializer),
            "v_regularizer": regularizers.serialize(self.v_regularizer),
            "v_constraint": constraints.serialize(self.v_constraint),
        }


@keras.saving.register_keras_serializable(package="normlab")
class EvoNormB0(_EvoNorm):
    """EvoNorm-B0: a batch-dependent normalization-activation layer found by search.

    Divides by the larger of a batch standard deviation and a per-sample,
    gated instance standard deviation, which acts as the nonlinearity:

        y = x / max(sqrt(var_b + epsilon), v * x + sqrt(var_i + epsilon)) * gamma + beta

    ``var_b`` is the per-channel variance over the batch and spatial axes in
    training (``training=True`` and the layer trainable) and the moving
    variance otherwise; ``var_i`` is each sample's per-channel variance over
    the spatial axes. The moving variance follows timm's ``EvoNorm2dB0``:
    ``moving_variance = momentum * moving_variance + (1 - momentum) * var_b * n / (n - 1)``
    with ``n`` the elements per channel (the unbiased batch variance).
    ``momentum=0.9`` here is timm's ``momentum=0.1`` (PyTorch convention).
    As with BatchNormalization, ``trainable=False`` means inference. Replaces
    both the norm and the activation; use it without a ReLU after it.

    Args:
        axis: the channel axis; any axis but the batch axis. Default -1; 1 for
            channels-first. The input needs at least one spatial axis.
        momentum: weight the moving variance keeps at each step. Default 0.9.
        epsilon: small float added to both variances. Default 1e-3 (as timm).
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        v_initializer: initializer for ``v``. Default "ones".
        beta_regularizer, gamma_regularizer, v_regularizer: optional
            regularizers. Default None.
        beta_constraint, gamma_constraint, v_constraint: optional
            constraints. Default None.
        moving_variance_initializer: initializer for the moving variance. Default "ones".
        synchronized: in training, take the batch statistics over the global
            batch of a data-parallel step (every replica's samples), exactly
            as ``BatchNormalization(synchronized=True)`` does on each backend
            (see :mod:`normlab.distributed`); the unbiased correction of the
            moving variance then counts the global batch. Not under any
            distribution, identical to ``False``. Default False.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments:
        inputs: input tensor of rank >= 3.
        training: use the batch variance and update the moving one. Default False.

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(8, 5, 5, 4)).astype("float32")
        >>> layer = normlab.layers.EvoNormB0()
        >>> y = layer(x, training=True)
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'v', 'moving_variance']
        >>> var = x.var(axis=(0, 1, 2), ddof=1)                  # unbiased batch variance
        >>> bool(np.allclose(keras.ops.convert_to_numpy(layer.moving_variance), 0.9 + 0.1 * var))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.9,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        v_initializer: Initializer = "ones",
        moving_variance_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        v_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        v_constraint: Constraint = None,
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis, epsilon=epsilon, center=center, scale=scale,
            beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
            v_initializer=v_initializer, v_regularizer=v_regularizer, v_constraint=v_constraint,
            **kwargs,
        )
        self.momentum = check_momentum(momentum, owner=type(self).__init__)
        self.moving_variance_initializer = keras_object(
            "initializer", "moving_variance_initializer", moving_variance_initializer)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape: Shape) -> None:
        require_spatial(input_shape, "EvoNormB0")
        channels = self.build_common(input_shape)
        self.moving_variance = self.add_statistic(
            "moving_variance", (channels,), self.moving_variance_initializer)

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        training = check_training(training)
        x = self.float_input(inputs)
        common: dict[str, Any] = dict(axis=self._channel_axis, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        if not (training and self.trainable):
            return self.compute_output(ops.evo_norm_b0(x, self.v, self.moving_variance, **common))
        replica_sum = self.replica_sum(self.synchronized)
        if self.empty_batch(x, replica_sum):
            return self.compute_output(x)
        y, variance = ops.evo_norm_b0(
            x, self.v, training=True, return_stats=True, replica_sum=replica_sum, **common
        )
        shape = keras.ops.shape(x)
        n = 1
        for i, size in enumerate(shape):
            if i != self._channel_axis:
                n = n * size
        if replica_sum is None and is_traced_int(n):  # no cast: see is_traced_int
            unbiased = variance * (n / max(n - 1, 1))
        else:
            if replica_sum is not None:  # the global batch's element count per channel, from the statistics
                n = keras.ops.reshape(replica_sum.count, (-1,))[0]
            n = size_as(n, variance.dtype)
            unbiased = variance * n / at_least(n - 1.0, 1.0)
        self.update_moving(x, ((self.moving_variance, unbiased, self.momentum),), replica_sum)
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "synchronized": self.synchronized,
        }


@keras.saving.register_keras_serializable(package="normlab")
class EvoNormS0(_EvoNorm):
    """EvoNorm-S0: a batch-independent normalization-activation layer found by search.

    A swish-like gate divided by a group standard deviation, as in group
    normalization but without subtracting the mean:

        y = x * sigmoid(v * x) / sqrt(var_g + epsilon) * gamma + beta

    ``var_g`` is each sample's variance over its group of ``C // groups``
    channels and all spatial axes. Behaves the same in training and
    inference (no batch statistics). Follows timm's ``EvoNorm2dS0``, for any
    rank and either channel layout. Replaces both the norm and the
    activation.

    Args:
        groups: number of groups, a divisor of the channel count; -1 for one
            per channel. Default None: 32 groups, unless ``group_size`` is given.
        group_size: channels per group, a divisor of the channel count: the
            number of groups is then ``C // group_size`` (timm's
            ``group_size``). Give ``groups`` or ``group_size``, not both.
            Default None.
        axis: the channel axis; any axis but the batch axis. Default -1; 1 for
            channels-first.
        epsilon: small float added to the group variance. Default 1e-5 (as timm).
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        v_initializer: initializer for ``v``. Default "ones".
        beta_regularizer, gamma_regularizer, v_regularizer: optional
            regularizers. Default None.
        beta_constraint, gamma_constraint, v_constraint: optional
            constraints. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 6)).astype("float32")
        >>> s0 = normlab.layers.EvoNormS0(groups=3, epsilon=1e-12)
        >>> y = keras.ops.convert_to_numpy(s0(x))
        >>> group_std = x.reshape(2, 16, 3, 2).std(axis=(1, 3)).repeat(2, axis=1)[:, None, None, :]
        >>> bool(np.allclose(y, x / (1 + np.exp(-x)) / group_std, atol=1e-5))   # swish / group std
        True
        >>> by_size = normlab.layers.EvoNormS0(group_size=2, epsilon=1e-12)        # 3 groups of 2
        >>> bool(np.allclose(keras.ops.convert_to_numpy(by_size(x)), y))
        True

    Reference:
        Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
        NeurIPS 2020. https://arxiv.org/abs/2004.02967
    """

    def __init__(
        self,
        groups: int | None = None,
        group_size: int | None = None,
        axis: int = -1,
        epsilon: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        v_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        v_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        v_constraint: Constraint = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis, epsilon=epsilon, center=center, scale=scale,
            beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
            v_initializer=v_initializer, v_regularizer=v_regularizer, v_constraint=v_constraint,
            **kwargs,
        )
        self.groups = None if groups is None else check_groups(groups)
        self.group_size = check_positive_int(
            "group_size", group_size, example=8, allow_none=True, meaning="channels per group"
        )
        if self.groups is not None and self.group_size is not None:
            raise ValueError(
                error_message(
                    "group_size",
                    "either a number of groups or a group size, not both (they can disagree)",
                    f"groups={groups!r}, group_size={group_size!r}",
                    "Pass groups=... (the number of groups) or group_size=... (channels per group).",
                )
            )

    def build(self, input_shape: Shape) -> None:
        channels = self.build_common(input_shape)
        if self.group_size is not None:
            if channels % self.group_size:
                raise ValueError(
                    error_message(
                        "group_size",
                        f"a divisor of the number of channels ({channels})",
                        f"group_size={self.group_size} with {channels} channels (axis={self.axis})",
                        f"Use one of {divisors(channels)}.",
                    )
                )
            self._groups = channels // self.group_size
        else:
            self._groups = resolve_groups(32 if self.groups is None else self.groups, channels, self.axis)

    def call(self, inputs: Tensor) -> Tensor:
        y = ops.evo_norm_s0(
            self.float_input(inputs), self.v, groups=self._groups, axis=self._channel_axis,
            gamma=self.gamma, beta=self.beta, epsilon=self.epsilon,
        )
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups, "group_size": self.group_size}
