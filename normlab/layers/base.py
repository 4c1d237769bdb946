"""The base every normalization layer shares: axis validation, the learned
affine (``gamma``, ``beta``) with its initializers, regularizers and
constraints, and a ``get_config`` that returns the constructor arguments.

Subclasses choose the axes and grouping in ``build`` and make one op call in
``call``; they never branch on the backend.
"""

from __future__ import annotations

import keras
from keras import constraints, initializers, regularizers

from normlab.ops.axes import as_axis_list, canonicalize_axes
from normlab.ops.validate import check_epsilon, error_message


class Normalization(keras.layers.Layer):
    """Base class: a normalization with an optional per-feature scale and offset.

    Args:
        axis: feature axis (int) or axes (list of ints). Never the batch axis.
        epsilon: small float added to the variance. Must be >= 0.
        center: if True, add a learned offset ``beta``.
        scale: if True, multiply by a learned scale ``gamma``.
        beta_initializer, gamma_initializer: initializers for the weights.
        beta_regularizer, gamma_regularizer: optional regularizers.
        beta_constraint, gamma_constraint: optional constraints.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).
    """

    #: Whether ``axis`` may name several axes (LayerNormalization) or one.
    multi_axis = False

    def __init__(
        self,
        *,
        axis,
        epsilon,
        center,
        scale,
        beta_initializer,
        gamma_initializer,
        beta_regularizer,
        gamma_regularizer,
        beta_constraint,
        gamma_constraint,
        **kwargs,
    ):
        super().__init__(**kwargs)
        axes = as_axis_list(axis)
        if not self.multi_axis and (len(axes) != 1 or isinstance(axis, (list, tuple))):
            raise TypeError(
                error_message(
                    "axis",
                    f"a single int (the channel axis) for {type(self).__name__}",
                    f"axis={axis!r}",
                    "Pass one axis such as axis=-1 (channels-last) or axis=1 (channels-first).",
                )
            )
        self.axis = axes if isinstance(axis, (list, tuple)) else axes[0]
        self.epsilon = check_epsilon(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        self.gamma = None
        self.beta = None

    def resolve_axes(self, input_shape) -> list[int]:
        """The layer's feature axes for this input, validated and non-negative."""
        return canonicalize_axes(self.axis, len(input_shape))

    def add_affine(self, shape) -> None:
        """Creates ``gamma`` and ``beta`` of ``shape`` as configured."""
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=tuple(shape),
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=tuple(shape),
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
            )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
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
