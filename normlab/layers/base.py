"""The base every normalization layer shares: argument checks, the learned
affine (``gamma``, ``beta``) and moving statistics, the build prologue, and
a ``get_config`` that returns the constructor arguments. The dtype policy
is :mod:`normlab.layers.dtypes`.

Subclasses choose the axes and grouping in ``build`` and make one op call in
``call``; they never branch on the backend.
"""

from __future__ import annotations

import functools
import numbers
import threading
from typing import Any, Callable, Literal, Sequence

import keras
import numpy as np
from keras import constraints, initializers, ops, regularizers

from normlab import distributed
from normlab.backends import thread_setting
from normlab.layers.dtypes import FloatCompute, check_float_policy
from normlab.ops.axes import (
    as_axis_list,
    canonicalize_axes,
    is_traced_int,
    known_dims,
    positive,
    reject_batch_axis,
    single_axis,
)
from normlab.ops.moments import CountingSum
from normlab.ops.validate import ArgumentTypeError, check_bool, check_epsilon, error_message
from normlab.types import Axis, Constraint, Initializer, Regularizer, Shape, Tensor

_KINDS = {
    "initializer": (initializers, "a Keras initializer: a name such as 'ones', 'zeros' or "
                    "'random_normal', a config dict, or an initializer instance",
                    "e.g. {name}='ones' or keras.initializers.Constant(1.0)"),
    "regularizer": (regularizers, "None or a Keras regularizer: a name such as 'l2', a config "
                    "dict, or a regularizer instance",
                    "e.g. {name}='l2' or keras.regularizers.L2(1e-4)"),
    "constraint": (constraints, "None or a Keras constraint: a name such as 'non_neg' or "
                   "'unit_norm', a config dict, or a constraint instance",
                   "e.g. {name}='non_neg' or keras.constraints.MaxNorm(3.0)"),
}


def keras_object(kind: Literal["initializer", "regularizer", "constraint"], name: str, value: Any) -> Any:
    """``keras.{kind}s.get(value)``, with normlab's error naming the argument.

    Keras alone says "Could not interpret initializer identifier: onez",
    which names neither the argument nor a fix. An initializer of None is
    refused: Keras fills such a weight with random glorot_uniform values (a
    random ``gamma``, a moving variance with negative entries). A saved
    config (:class:`SavedConfig`) keeps Keras' reading: its weights follow.
    """
    module, expected, example = _KINDS[kind]
    if kind == "initializer" and value is None and not getattr(_loading, "active", False):
        raise ValueError(
            error_message(name, expected, f"{name}=None, which Keras fills with random glorot_uniform values "
                          "whatever the weight's role", "Leave the argument out for the layer's default, "
                          f"or use {example.format(name=name)}.")
        )
    try:
        return module.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            error_message(name, expected, f"{name}={value!r} ({error})",
                          f"Check the spelling; use {example.format(name=name)}.")
        ) from None


_loading = threading.local()


class SavedConfig:
    """Mixin (first in the bases): ``from_config`` takes what Keras' own
    layers accept, such as an initializer of None in a Keras model's config
    or a file saved before normlab refused it, whose weights are loaded or
    copied after construction anyway."""

    @classmethod
    def from_config(cls, config: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        with thread_setting(_loading, "active", True, False):
            return super().from_config(config, *args, **kwargs)  # type: ignore[misc]


def check_training(training: Any) -> Any:
    """``training`` as a layer's ``call`` takes it: None, a bool, or a 0/1
    int (``tf.keras``' learning phase), else an error; a string such as
    ``"False"`` or a float would otherwise count by its truth value. A
    NumPy value is read as the Python value it holds. A bool or int tensor
    passes as it is, as Keras' layers take it: a concrete one is read as a
    bool, and a traced one (``jax.jit``, ``tf.function``) fails there as in
    Keras' layers, which also choose the branch in Python; a float tensor is
    an error (Keras' ``__call__`` makes one of ``np.float64(0.5)``)."""
    if isinstance(training, (np.ndarray, np.generic)) and training.size == 1:
        training = training.item()  # a NumPy value is host data: read it as the Python value it holds
    if training is None or isinstance(training, (bool, np.bool_)):
        return training
    if hasattr(training, "shape") and not isinstance(training, np.ndarray):
        # A tensor (Keras' __call__ makes one of a NumPy value) is never read here, but its dtype is known:
        # a flag is a bool or an int (tf.keras' learning phase); a float's truth value is not 0.5 or 2's intent.
        if keras.backend.standardize_dtype(training.dtype).startswith(("bool", "int", "uint")):
            return training
    elif isinstance(training, numbers.Integral) and training in (0, 1):
        return bool(training)
    raise ArgumentTypeError(error_message(
        "training", "None or a bool (True or False)", f"training={training!r} of type {type(training).__name__}",
        "Pass training=True or training=False, or leave it out (Keras' fit and predict set it)."))


class Normalization(SavedConfig, FloatCompute, keras.layers.Layer):
    """Base class: a normalization with an optional per-feature scale and offset.

    Args:
        axis: feature axis (int) or axes (list of ints). Never the batch axis.
        epsilon: small float added to the variance. Must be >= 0 and finite.
        center: if True, add a learned offset ``beta``.
        scale: if True, multiply by a learned scale ``gamma``.
        beta_initializer, gamma_initializer: initializers for the weights.
        beta_regularizer, gamma_regularizer: optional regularizers.
        beta_constraint, gamma_constraint: optional constraints.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    A subclass picks its axes and weights in ``build`` and calls an op in ``call``
    between :meth:`float_input` and :meth:`compute_output` (integer inputs and
    mixed precision as in normlab's layers); register it with
    ``keras.saving.register_keras_serializable`` to save it in ``.keras`` files.

    Example:
        A norm that only centers over the feature axes (mean-only layer norm):

        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.layers.base import Normalization
        >>> from normlab.ops import moments
        >>> class MeanCentering(Normalization):
        ...     multi_axis = True  # axis may be a list, as in LayerNormalization
        ...     def __init__(self, axis=-1, center=True, **kwargs):
        ...         super().__init__(axis=axis, epsilon=0.0, center=center, scale=False,
        ...                          beta_initializer="zeros", gamma_initializer="ones",
        ...                          beta_regularizer=None, gamma_regularizer=None,
        ...                          beta_constraint=None, gamma_constraint=None, **kwargs)
        ...     def build(self, input_shape):
        ...         self.add_affine(self.build_feature_axes(input_shape))
        ...     def call(self, inputs):
        ...         x = self.float_input(inputs)
        ...         mean, _ = moments(x, self.feature_axes(x))
        ...         y = x - mean if self.beta is None else x - mean + self.beta
        ...         return self.compute_output(y)
        >>> layer = MeanCentering()
        >>> ops.convert_to_numpy(layer(np.array([[1.0, 2.0, 6.0]], "float32"))).tolist()
        [[-2.0, -1.0, 3.0]]
        >>> [w.path for w in layer.weights]
        ['mean_centering/beta']
    """

    #: Whether ``axis`` may name several axes (LayerNormalization) or one.
    multi_axis = False

    def __init__(
        self,
        *,
        axis: Axis,
        epsilon: float,
        center: bool,
        scale: bool,
        beta_initializer: Initializer,
        gamma_initializer: Initializer,
        beta_regularizer: Regularizer,
        gamma_regularizer: Regularizer,
        beta_constraint: Constraint,
        gamma_constraint: Constraint,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_float_policy(self)
        axes = as_axis_list(axis) if self.multi_axis else [single_axis(axis, type(self).__name__)]
        reject_batch_axis(axes, axis)  # known without the input's rank: at construction, as TF Addons
        # An int stays an int; any sequence (a list, an array, a range) stays a list.
        single = isinstance(axis, numbers.Integral) or getattr(axis, "ndim", None) == 0
        self.axis: int | list[int] = axes[0] if single else axes
        self.epsilon = self.check_epsilon(epsilon, type(self).__init__)
        self.center = check_bool("center", center)
        # (RMSNormalization keeps its weight here once built, as Keras' does.)
        self.scale: bool | Tensor | None = check_bool("scale", scale)
        self.beta_initializer = keras_object("initializer", "beta_initializer", beta_initializer)
        self.gamma_initializer = keras_object("initializer", "gamma_initializer", gamma_initializer)
        self.beta_regularizer = keras_object("regularizer", "beta_regularizer", beta_regularizer)
        self.gamma_regularizer = keras_object("regularizer", "gamma_regularizer", gamma_regularizer)
        self.beta_constraint = keras_object("constraint", "beta_constraint", beta_constraint)
        self.gamma_constraint = keras_object("constraint", "gamma_constraint", gamma_constraint)
        self.supports_masking = True
        self.autocast = False  # see the module docstring: inputs keep their float dtype
        self.gamma: Tensor | None = None
        self.beta: Tensor | None = None

    @staticmethod
    def check_epsilon(epsilon: object, owner: Callable[..., Any] | None = None) -> float:
        """Validates ``epsilon`` (an error quotes ``owner``'s default); a subclass whose
        formula needs it positive overrides this."""
        return check_epsilon(epsilon, owner=owner)

    # ------------------------------------------------------------------ build

    def resolve_axes(self, input_shape: Shape) -> list[int]:
        """The layer's feature axes for this input, validated and non-negative."""
        return canonicalize_axes(self.axis, len(input_shape))

    def build_channel_axis(self, input_shape: Shape, axis: Axis | None = None) -> tuple[int, int]:
        """The build prologue of a per-channel norm: resolves the channel axis
        (``self.axis`` unless ``axis`` is given), checks that its size is
        known, and fixes the input's rank and channel count in the
        ``InputSpec``. Returns ``(channel_axis, channels)``."""
        check_float_policy(self)  # again: a DTypePolicyMap or a later assignment may have changed it
        axis = self.axis if axis is None else axis
        (channel_axis,) = canonicalize_axes(axis, len(input_shape))
        (channels,) = known_dims(input_shape, [channel_axis], axis=axis)
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={channel_axis: channels})
        self._channel_axis = channel_axis
        return channel_axis, channels

    def build_feature_axes(self, input_shape: Shape, weights: bool | None = None) -> Sequence[int | None]:
        """The build prologue of a norm over feature axes (LayerNorm, RMSNorm):
        returns their sizes, and lets the ``InputSpec`` fix only those sizes
        (keyed by the axes as given, so ``axis=-1`` means the last axis of
        every input). Like Keras, a layer built on ``(2, 2, 2)`` then accepts
        ``(10, 2, 2, 2)``; :meth:`feature_axes` resolves the axes per call.
        A layer without weights over the axes (``weights``, by default
        ``scale or center``) takes them of any size, unknown ones included."""
        check_float_policy(self)  # again: see build_channel_axis
        axes = self.resolve_axes(input_shape)
        given = as_axis_list(self.axis)
        min_ndim = max(-a + 1 if a < 0 else a + 1 for a in given)
        if not (self.scale or self.center if weights is None else weights):
            self.input_spec = keras.layers.InputSpec(min_ndim=min_ndim)
            return [input_shape[a] for a in axes]
        shape = known_dims(input_shape, axes, axis=self.axis)
        by_position = dict(zip(sorted(given, key=lambda a: a % len(input_shape)), shape))
        self.input_spec = keras.layers.InputSpec(min_ndim=min_ndim, axes=by_position)
        return shape

    def feature_axes(self, inputs: Tensor) -> list[int]:
        """The feature axes for this call's input (its rank may differ from the build's)."""
        return canonicalize_axes(self.axis, len(inputs.shape))

    def add_affine(self, shape: Sequence[int | None], *, scale: bool | None = None,
                   center: bool | None = None, gamma_name: str = "gamma") -> None:
        """Creates ``gamma`` and ``beta`` of ``shape`` as configured (or as
        ``scale``/``center`` say), never autocast; ``gamma_name`` names the
        variable (its path) where a peer names it otherwise."""
        if self.scale if scale is None else scale:
            self.gamma = self.add_weight(
                name=gamma_name, shape=tuple(shape), initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                trainable=True, autocast=False,
            )
        if self.center if center is None else center:
            self.beta = self.add_weight(
                name="beta", shape=tuple(shape), initializer=self.beta_initializer,
                regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                trainable=True, autocast=False,
            )

    def add_statistic(self, name: str, shape: Sequence[int], initializer: Initializer) -> keras.Variable:
        """Creates a non-trainable moving statistic (never autocast)."""
        return self.add_weight(name=name, shape=tuple(shape), initializer=initializer,
                               trainable=False, autocast=False)

    # ------------------------------------------------------------------- call

    def update_moving(self, inputs: Tensor, updates: Sequence[tuple[keras.Variable, Tensor, float]],
                      replica_sum: CountingSum | None = None, mask: Tensor | None = None) -> None:
        """Moving averages: ``moving <- moving * momentum + batch * (1 - momentum)``
        for each ``(variable, batch_statistic, momentum)``. An empty batch
        (no element: a size 0, batch or spatial, known only at run time
        inside a traced function) leaves them unchanged; one known to be
        empty is never normalized (see :meth:`empty_batch`). With
        ``replica_sum`` (synchronized statistics, the same on every replica;
        see :meth:`replica_sum`) the batch is the global one, whose count the
        statistics' own all-reduce gave: a replica whose own share is empty
        updates its copy like the others. A ``mask`` with no position kept (a
        batch of padding only) leaves them unchanged too."""
        if replica_sum is not None:
            if replica_sum.count is None:
                raise RuntimeError(f"{type(self).__name__}: no statistics were synchronized before the update.")
            sizes: list[Any] = [ops.sum(replica_sum.count)]  # (not ops.max: a graph break under torch.compile)
        else:
            # Sizes known only at run time (TF's unknown ones); a known 0 never
            # gets here (see empty_batch). A torch SymInt is never 0:
            # torch.compile specializes sizes 0 and 1, and the batch is then
            # known to be empty.
            sizes = [n for n in ops.shape(inputs) if not isinstance(n, int) and not is_traced_int(n)]
        kept = [k for k in map(positive, sizes) if k is not True]  # (a symbolic batch is known positive)
        if mask is not None and replica_sum is None:  # (synchronized: the global count of kept positions)
            kept.append(ops.any(ops.cast(mask, "bool")))
        for moving, batch, momentum in updates:
            # The variable's tensor times a Python number: the backend's own
            # operator keeps the number one (Keras' ops would make a float32
            # tensor of it, copied to the device: a stream sync on a GPU).
            value = moving.value * momentum + ops.cast(batch, moving.dtype) * (1.0 - momentum)
            if kept:
                value = ops.where(functools.reduce(ops.logical_and, kept), value, moving.value)
            moving.assign(value)

    @staticmethod
    def replica_sum(synchronized: bool) -> CountingSum | None:
        """The cross-replica sum for synchronized statistics where one applies
        (:func:`normlab.distributed.replica_sum`), else None. It keeps the
        global count, which :meth:`update_moving` reads."""
        found = distributed.replica_sum() if synchronized else None
        return None if found is None else CountingSum(found)

    @staticmethod
    def empty_batch(inputs: Tensor, replica_sum: CountingSum | None = None) -> bool:
        """Whether the batch is known to hold no sample: it has no statistics,
        so a layer returns its (empty) input and updates nothing. Never with
        ``replica_sum``: the other replicas' batches have statistics, and
        their all-reduces wait for this replica's share."""
        return replica_sum is None and 0 in inputs.shape

    def compute_output_shape(self, input_shape: Shape) -> tuple[int | None, ...]:
        self.resolve_axes(input_shape)  # an axis out of range raises here too, as in Keras' layers
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
            }
        )
        return config
