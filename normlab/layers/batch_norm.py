"""BatchNormalization (Ioffe & Szegedy, 2015)."""

from __future__ import annotations

import warnings
from typing import Any

import keras
from keras import initializers

from normlab import ops
from normlab.layers.base import Normalization, check_training, keras_object
from normlab.ops.moments import CountingSum
from normlab.ops.validate import (
    check_bool,
    check_momentum,
    check_positive_int,
    check_renorm_clipping,
    error_message,
)
from normlab.types import Constraint, Initializer, Regularizer, RenormClipping, Shape, Tensor


def _check_renorm_momentum(value: object) -> float:
    try:
        return check_momentum(value)
    except ValueError:
        raise ValueError(
            error_message(
                "renorm_momentum",
                "a float in [0, 1], the weight the renorm moving averages keep at each step",
                f"renorm_momentum={value!r}",
                "Use a value such as renorm_momentum=0.99 (the default).",
            )
        ) from None


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
    ``keras.layers.BatchNormalization``, including ``renorm``.

    Batch renormalization (``renorm=True``, Ioffe 2017) corrects the batch
    statistics toward moving ones during training, which helps small or
    non-i.i.d. batches:

        y = ((x - mean_c) / std_c * r + d) * gamma + beta,  std_c = sqrt(var_c + epsilon)
        r = clip(std_c / renorm_stddev, rmin, rmax),  d = clip((mean_c - renorm_mean) / renorm_stddev, -dmax, dmax)

    with no gradient through ``r`` and ``d``; ``renorm_mean`` and
    ``renorm_stddev`` are moving averages with ``renorm_momentum``, and the
    inference statistics track ``moving_stddev`` (``moving_variance`` is
    ``moving_stddev**2 - epsilon``), exactly as Keras does. Inference is the
    same with or without renorm.

    Ghost batch normalization (``virtual_batch_size=v``, Hoffer et al. 2017)
    normalizes each consecutive group of ``v`` samples with its own
    statistics in training; the moving averages are updated with the
    statistics averaged over the groups (as TF 1's ``virtual_batch_size``).
    Inference always uses the moving statistics, never ghost batches. The
    training batch size must be a multiple of ``v`` (a clear error otherwise:
    where the batch size is known when the call is traced, and in a
    TensorFlow graph with an unknown batch size, such as ``fit``'s, as a
    graph assertion at run time; under XLA, which drops assertions,
    TensorFlow's reshape error instead). Drop or pad a last, smaller batch
    (``drop_remainder=True`` in ``tf.data``). With a mask, each ghost batch
    weighs in those averages as its unmasked positions.

    Frozen modes. ``trainable=False`` (the Keras convention) freezes
    everything: ``gamma`` and ``beta`` stop training and the layer always
    normalizes with the moving statistics, which no longer update, whatever
    ``training`` says. ``use_moving_statistics=True`` freezes only the
    statistics: the moving mean and variance are used in training too and
    never updated, while ``gamma`` and ``beta`` keep training, the usual way
    to fine-tune a pretrained network with small batches.

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
        renorm: use batch renormalization in training. Adds three
            non-trainable weights (``moving_stddev``, ``renorm_mean``,
            ``renorm_stddev``). Default False.
        renorm_clipping: with ``renorm``, a dict with optional keys ``"rmax"``
            (default inf), ``"rmin"`` (default 0) and ``"dmax"`` (default inf)
            bounding ``r`` to ``[rmin, rmax]`` and ``d`` to ``[-dmax, dmax]``
            (``rmin <= 1 <= rmax``; without ``renorm`` it is ignored, with a warning).
            The paper ramps them from 1, 1, 0 to 3, 1/3, 5. Default None
            (no clipping).
        renorm_momentum: weight the renorm moving averages keep at each step.
            Default 0.99.
        synchronized: in training, compute the batch statistics over the
            global batch of a data-parallel step (every replica's samples)
            instead of the batch each replica sees, and update the moving
            statistics with them (identical on every replica). Per backend:
            TensorFlow, inside ``strategy.run`` of a ``tf.distribute``
            strategy with several replicas (so ``fit`` under
            ``MirroredStrategy``): sums all-reduced with the replica
            context; JAX, inside ``normlab.distributed.axis_name(name)`` in a
            function mapped with ``jax.shard_map`` or ``jax.pmap`` over
            ``name``: sums ``psum``-ed over that axis (under sharded
            ``jax.jit``, e.g. ``keras.distribution.DataParallel``, the
            statistics are the global batch's with or without this flag);
            PyTorch, when ``torch.distributed`` is initialized with several
            processes (gloo on CPU, NCCL on GPU): sums all-reduced over the
            world (or ``normlab.distributed.process_group``), gradients too.
            Per-replica batch sizes may differ. With ghost batches each ghost
            batch keeps its own statistics and only their average (the
            moving-statistics update) spans the replicas. Not under any of
            these, identical to ``False``. See :mod:`normlab.distributed`.
            Default False.
        virtual_batch_size: samples per ghost batch in training, or None for
            the whole batch. Default None.
        use_moving_statistics: normalize with the moving statistics in
            training too and never update them, while ``gamma`` and ``beta``
            still train. Default False.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Call arguments:
        inputs: input tensor.
        training: use batch statistics and update the moving ones. Default False.
        mask: optional boolean tensor of the input's shape without its last
            axis, Keras' convention (what ``keras.layers.Masking`` or an
            ``Embedding(mask_zero=True)`` produces, e.g. ``(batch, time)`` for
            sequences), whatever ``axis`` is; masked-out positions do not
            count toward the batch statistics.

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 26, 26, 10)).astype("float32")
        >>> layer = normlab.layers.BatchNormalization(axis=3)
        >>> y = layer(x, training=True)
        >>> len(layer.trainable_weights), len(layer.non_trainable_weights), layer.count_params()
        (2, 2, 40)
        >>> np.round(np.asarray(layer.moving_mean)[:2], 2)          # 0.99 * 0 + 0.01 * 3
        array([0.03, 0.03], dtype=float32)
        >>> ghost = normlab.layers.BatchNormalization(virtual_batch_size=4)
        >>> y = keras.ops.convert_to_numpy(ghost(x, training=True))
        >>> first = normlab.layers.BatchNormalization()(x[:4], training=True)
        >>> bool(np.allclose(y[:4], keras.ops.convert_to_numpy(first), atol=1e-5))  # each ghost batch alone
        True

    Reference:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015.
        https://arxiv.org/abs/1502.03167
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
        moving_mean_initializer: Initializer = "zeros",
        moving_variance_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        renorm: bool = False,
        renorm_clipping: RenormClipping | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        virtual_batch_size: int | None = None,
        use_moving_statistics: bool = False,
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
        self.moving_mean_initializer = keras_object(
            "initializer", "moving_mean_initializer", moving_mean_initializer)
        self.moving_variance_initializer = keras_object(
            "initializer", "moving_variance_initializer", moving_variance_initializer)
        self.renorm = check_bool("renorm", renorm)
        self._clipping = check_renorm_clipping(renorm_clipping)
        if self._clipping and not self.renorm:
            warnings.warn(
                f"BatchNormalization ignores renorm_clipping={renorm_clipping!r} without renorm=True: "
                "it is plain batch normalization. Pass renorm=True to clip r and d.",
                UserWarning,
                stacklevel=2,
            )
        self.renorm_clipping = None if renorm_clipping is None else dict(renorm_clipping)
        self.renorm_momentum = _check_renorm_momentum(renorm_momentum)
        self.virtual_batch_size = check_positive_int(
            "virtual_batch_size", virtual_batch_size, example=32, allow_none=True,
            meaning="the number of samples per ghost batch",
        )
        self.use_moving_statistics = check_bool("use_moving_statistics", use_moving_statistics)
        self.synchronized = check_bool("synchronized", synchronized)

    def build(self, input_shape: Shape) -> None:
        _, channels = self.build_channel_axis(input_shape)
        self.add_affine((channels,))
        self.moving_mean = self.add_statistic("moving_mean", (channels,), self.moving_mean_initializer)
        self.moving_variance = self.add_statistic(
            "moving_variance", (channels,), self.moving_variance_initializer)
        if self.renorm:
            def stddev_initializer(shape: Shape, dtype: Any = None) -> Tensor:
                variance = self.moving_variance_initializer(shape, dtype=dtype)
                return keras.ops.sqrt(variance)

            # Same weights, in the same order, as keras.layers.BatchNormalization(renorm=True).
            self.moving_stddev = self.add_statistic("moving_stddev", (channels,), stddev_initializer)
            self.renorm_mean = self.add_statistic("renorm_mean", (channels,), self.moving_mean_initializer)
            self.renorm_stddev = self.add_statistic("renorm_stddev", (channels,), stddev_initializer)

    def _expand_mask(self, inputs: Tensor, mask: Tensor | None) -> Tensor | None:
        if mask is None:
            return None
        expected = tuple(inputs.shape[:-1])
        if len(mask.shape) != len(expected) or any(
                m is not None and s is not None and m not in (1, s) for m, s in zip(mask.shape, expected)):
            raise ValueError(
                error_message(
                    "mask",
                    "a tensor of the inputs' shape without their last axis (Keras' mask convention), "
                    "or one that broadcasts to it",
                    f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(inputs.shape)}",
                    "Pass a mask of shape inputs.shape[:-1], e.g. (batch, time) for (batch, time, features).",
                )
            )
        # Keras masks cover every axis but the last (a Masking layer masks
        # whole feature vectors), whichever axis holds the channels.
        return keras.ops.expand_dims(mask, -1)

    def call(self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None) -> Tensor:
        training = check_training(training)
        x = self.float_input(inputs)
        mask = self._expand_mask(x, mask)  # checked on every call, as Keras does
        common: dict[str, Any] = dict(axis=self._channel_axis, gamma=self.gamma, beta=self.beta, epsilon=self.epsilon)
        if not (training and self.trainable) or self.use_moving_statistics:
            return self.compute_output(ops.batch_norm(x, self.moving_mean, self.moving_variance, **common))
        replica_sum = common["replica_sum"] = self.replica_sum(self.synchronized)
        if self.empty_batch(x, replica_sum):  # no statistics to normalize with or to learn from
            return self.compute_output(x)
        if self.renorm:
            y, mean, variance = ops.batch_renorm(
                x, self.renorm_mean, self.renorm_stddev, clipping=self._clipping, mask=mask,
                virtual_batch_size=self.virtual_batch_size, return_stats=True, **common,
            )
            self._update_renorm_statistics(x, mean, variance, replica_sum, mask)
            return self.compute_output(y)
        if self.virtual_batch_size is not None:
            y, mean, variance = ops.ghost_batch_norm(
                x, self.virtual_batch_size, mask=mask, return_stats=True, **common
            )
        else:
            y, mean, variance = ops.batch_norm(x, training=True, mask=mask, return_stats=True, **common)
        self.update_moving(x, ((self.moving_mean, mean, self.momentum),
                               (self.moving_variance, variance, self.momentum)), replica_sum, mask)
        return self.compute_output(y)

    def _update_renorm_statistics(self, x: Tensor, mean: Tensor, variance: Tensor,
                                  replica_sum: CountingSum | None, mask: Tensor | None = None) -> None:
        stddev = keras.ops.sqrt(variance + self.epsilon)
        # moving_variance follows the updated moving_stddev (its value, formed
        # here), under the same guard: a batch empty at run time changes neither.
        moving_stddev = self.moving_stddev.value * self.momentum + keras.ops.cast(stddev, self.moving_stddev.dtype) * (
            1.0 - self.momentum)
        self.update_moving(
            x,
            (
                (self.renorm_mean, mean, self.renorm_momentum),
                (self.renorm_stddev, stddev, self.renorm_momentum),
                (self.moving_mean, mean, self.momentum),
                (self.moving_stddev, stddev, self.momentum),
                (self.moving_variance, keras.ops.relu(moving_stddev * moving_stddev - self.epsilon), 0.0),
            ),
            replica_sum,
            mask,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
            "synchronized": self.synchronized,
            "virtual_batch_size": self.virtual_batch_size,
            "use_moving_statistics": self.use_moving_statistics,
        }
