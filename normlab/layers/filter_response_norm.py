"""FilterResponseNormalization and TLU (Singh & Krishnan, 2019)."""

from __future__ import annotations

from typing import Any

import keras
from keras import constraints, initializers, regularizers

from normlab import ops
from normlab.layers.base import Normalization, SavedConfig, keras_object
from normlab.layers.dtypes import FloatCompute, check_float_policy
from normlab.ops.axes import canonicalize_axes, known_dims, reject_batch_axis, single_axis
from normlab.ops.filter_response_norm import check_frn_input, frn_axes
from normlab.ops.validate import check_bool
from normlab.types import Axis, Constraint, Initializer, Regularizer, Shape, Tensor


def _tau_weight(
    layer: keras.layers.Layer, name: str, shape: tuple[int, ...], initializer: Any, regularizer: Any,
    constraint: Any,
) -> keras.Variable:
    return layer.add_weight(
        name=name, shape=shape, initializer=initializer, regularizer=regularizer,
        constraint=constraint, trainable=True, autocast=False,
    )


@keras.saving.register_keras_serializable(package="normlab")
class TLU(SavedConfig, FloatCompute, keras.layers.Layer):
    """Thresholded linear unit: ``max(x, tau)`` with a learned per-channel threshold.

    The activation the paper pairs with filter response normalization: a
    ReLU whose threshold ``tau`` is learned, so that FRN's output, which is
    not centered, can still be cut at a learned level:

        y = max(x, tau)                     (affine=False)
        y = max(x, alpha * x + tau)         (affine=True, "TLU-affine")

    ``tau`` and ``alpha`` have one value per channel on ``axis``. The
    arguments of ``tfa.layers.TLU`` are accepted in its order
    (``TLU(True)`` is TLU-affine); unlike that layer, whose weights had
    one value per element of the input, the weights are per channel (the
    paper's form).

    Args:
        affine: use ``max(x, alpha * x + tau)``. Default False.
        tau_initializer: initializer for ``tau``. Default "zeros" (a ReLU at first).
        tau_regularizer: optional regularizer for ``tau``. Default None.
        tau_constraint: optional constraint for ``tau``. Default None.
        alpha_initializer: initializer for ``alpha`` (affine only). Default "zeros".
        alpha_regularizer: optional regularizer for ``alpha``. Default None.
        alpha_constraint: optional constraint for ``alpha``. Default None.
        axis: the channel axis; any axis but the batch axis. Default -1.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.array([[-2.0, -0.5, 1.5]], "float32")
        >>> tlu = normlab.layers.TLU(tau_initializer=keras.initializers.Constant(-1.0))
        >>> keras.ops.convert_to_numpy(tlu(x)).tolist()
        [[-1.0, -0.5, 1.5]]
        >>> relu = keras.ops.convert_to_numpy(normlab.layers.TLU()(x))   # tau = 0 is a ReLU
        >>> bool(np.array_equal(relu, np.maximum(x, 0)))
        True

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer: Eliminating
        Batch Dependence in the Training of Deep Neural Networks", CVPR 2020.
        https://arxiv.org/abs/1911.09737
    """

    def __init__(
        self,
        affine: bool = False,
        tau_initializer: Initializer = "zeros",
        tau_regularizer: Regularizer = None,
        tau_constraint: Constraint = None,
        alpha_initializer: Initializer = "zeros",
        alpha_regularizer: Regularizer = None,
        alpha_constraint: Constraint = None,
        axis: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_float_policy(self)
        self.axis = single_axis(axis, "TLU")
        reject_batch_axis([self.axis], axis)
        self.affine = check_bool("affine", affine)
        self.tau_initializer = keras_object("initializer", "tau_initializer", tau_initializer)
        self.tau_regularizer = keras_object("regularizer", "tau_regularizer", tau_regularizer)
        self.tau_constraint = keras_object("constraint", "tau_constraint", tau_constraint)
        self.alpha_initializer = keras_object("initializer", "alpha_initializer", alpha_initializer)
        self.alpha_regularizer = keras_object("regularizer", "alpha_regularizer", alpha_regularizer)
        self.alpha_constraint = keras_object("constraint", "alpha_constraint", alpha_constraint)
        self.supports_masking = True
        self.alpha: keras.Variable | None = None

    def build(self, input_shape: Shape) -> None:
        (self._channel_axis,) = canonicalize_axes(self.axis, len(input_shape))
        (channels,) = known_dims(input_shape, [self._channel_axis], axis=self.axis)
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={self._channel_axis: channels})
        self.tau = _tau_weight(self, "tau", (channels,), self.tau_initializer, self.tau_regularizer,
                               self.tau_constraint)
        if self.affine:
            self.alpha = _tau_weight(self, "alpha", (channels,), self.alpha_initializer,
                                     self.alpha_regularizer, self.alpha_constraint)

    def call(self, inputs: Tensor) -> Tensor:
        # Float inputs arrive autocast; integers (uint8 images) leave in the compute dtype too.
        y = ops.tlu(self.float_input(inputs), self.tau, axis=self._channel_axis, alpha=self.alpha)
        return self.compute_output(y)

    def compute_output_shape(self, input_shape: Shape) -> tuple[int | None, ...]:
        canonicalize_axes(self.axis, len(input_shape))  # an axis out of range raises, as at build
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "axis": self.axis,
            "affine": self.affine,
            "tau_initializer": initializers.serialize(self.tau_initializer),
            "tau_regularizer": regularizers.serialize(self.tau_regularizer),
            "tau_constraint": constraints.serialize(self.tau_constraint),
            "alpha_initializer": initializers.serialize(self.alpha_initializer),
            "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
            "alpha_constraint": constraints.serialize(self.alpha_constraint),
        }


@keras.saving.register_keras_serializable(package="normlab")
class FilterResponseNormalization(Normalization):
    """Filter response normalization: per sample and channel, divide by the RMS over space.

    For every sample and channel, the mean of squares ``nu2`` is taken over
    the spatial axes; nothing is subtracted and no batch statistic is used:

        y = x / sqrt(nu2 + epsilon + |learned_epsilon|) * gamma + beta
        y = max(y, tau)                                    (if use_tlu=True)

    with per-channel ``gamma``, ``beta`` and ``tau``. The paper's layer is
    FRN followed by a TLU (``use_tlu=True``, or a separate :class:`TLU`);
    the default, ``use_tlu=False``, is TF Addons' layer.

    Which axes? ``axis`` takes two forms:

    * an int (normlab's convention) is the **channel** axis; the statistics
      run over every other non-batch axis, for any rank: ``axis=-1`` for
      NHWC or NLC or NDHWC, ``axis=1`` for channels-first;
    * a list (TF Addons' convention) names the **spatial** axes to reduce
      over; the one non-batch axis left is the channel axis.
      ``tfa.layers.FilterResponseNormalization(axis=[1, 2])`` on NHWC is
      ``axis=[1, 2]`` or, equivalently, ``axis=-1`` here.

    TF Addons' arguments (``epsilon``, ``axis``, initializers, regularizers,
    constraints, ``learned_epsilon``, ``learned_epsilon_constraint``) keep
    their order and meaning; TF Addons stored ``gamma``/``beta`` with shape
    ``(1, 1, 1, C)``, here they have shape ``(C,)`` (reshape to port weights).

    Args:
        epsilon: small float added to ``nu2``. Default 1e-6.
        axis: the channel axis (int) or, TF Addons' form, the spatial axes
            (list). Default -1.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        learned_epsilon: add a learned scalar whose absolute value joins
            ``epsilon`` (initialized to 1e-4, as TF Addons); the paper
            recommends it when the spatial extent is small (e.g. 1x1), and
            a rank-2 input (no spatial axis) requires it. The weight is
            named ``learned_epsilon``, created with the layer (before
            ``build``, the first weight, as in TF Addons), and is the
            attribute ``eps_learned`` (None without it); ``use_eps_learned``
            and ``eps_learned_constraint`` are TF Addons' names for the
            switch and its constraint. Default False.
        learned_epsilon_constraint: optional constraint for it. Default None.
        center: add a learned per-channel offset ``beta``. Default True.
        scale: multiply by a learned per-channel scale ``gamma``. Default True.
        use_tlu: apply a TLU ``max(y, tau)`` with a learned per-channel
            ``tau``. Default False.
        tau_initializer: initializer for ``tau``. Default "zeros".
        tau_regularizer: optional regularizer for ``tau``. Default None.
        tau_constraint: optional constraint for ``tau``. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
        >>> frn = normlab.layers.FilterResponseNormalization(axis=[1, 2])   # as in TF Addons
        >>> y = keras.ops.convert_to_numpy(frn(x))
        >>> bool(np.allclose(np.mean(y ** 2, axis=(1, 2)), 1.0, atol=1e-4))
        True
        >>> nchw = np.transpose(x, (0, 3, 1, 2))
        >>> frn_first = normlab.layers.FilterResponseNormalization(axis=1, use_tlu=True)
        >>> y_first = keras.ops.convert_to_numpy(frn_first(nchw))           # channels-first, with TLU
        >>> bool(np.allclose(y_first, np.maximum(np.transpose(y, (0, 3, 1, 2)), 0), atol=1e-6))
        True

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer: Eliminating
        Batch Dependence in the Training of Deep Neural Networks", CVPR 2020.
        https://arxiv.org/abs/1911.09737
    """

    multi_axis = True

    def __init__(
        self,
        epsilon: float = 1e-6,
        axis: Axis = -1,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        learned_epsilon: bool = False,
        learned_epsilon_constraint: Constraint = None,
        center: bool = True,
        scale: bool = True,
        use_tlu: bool = False,
        tau_initializer: Initializer = "zeros",
        tau_regularizer: Regularizer = None,
        tau_constraint: Constraint = None,
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
        self.learned_epsilon = check_bool("learned_epsilon", learned_epsilon)
        self.learned_epsilon_constraint = keras_object(
            "constraint", "learned_epsilon_constraint", learned_epsilon_constraint)
        self.use_tlu = check_bool("use_tlu", use_tlu)
        self.tau_initializer = keras_object("initializer", "tau_initializer", tau_initializer)
        self.tau_regularizer = keras_object("regularizer", "tau_regularizer", tau_regularizer)
        self.tau_constraint = keras_object("constraint", "tau_constraint", tau_constraint)
        self.tau: keras.Variable | None = None
        # Created here, as TF Addons did (its weight order: learned_epsilon first).
        self.eps_learned = None if not self.learned_epsilon else self.add_weight(
            name="learned_epsilon", shape=(1,), initializer=initializers.Constant(1e-4),
            constraint=self.learned_epsilon_constraint, trainable=True, autocast=False,
        )

    # TF Addons' names for the learned epsilon's switch and constraint.
    @property
    def use_eps_learned(self) -> bool:
        """TF Addons' name for ``learned_epsilon`` (the switch)."""
        return self.learned_epsilon

    @property
    def eps_learned_constraint(self) -> Any:
        """TF Addons' name for ``learned_epsilon_constraint``."""
        return self.learned_epsilon_constraint

    def build(self, input_shape: Shape) -> None:
        ndim = len(input_shape)
        channel_axis, spatial = frn_axes(self.axis, ndim)
        check_frn_input(input_shape, spatial, self.learned_epsilon, sizes=True)
        _, channels = self.build_channel_axis(input_shape, axis=channel_axis)
        self._spatial_axes = spatial
        self.add_affine((channels,))
        if self.use_tlu:
            self.tau = _tau_weight(self, "tau", (channels,), self.tau_initializer, self.tau_regularizer,
                                   self.tau_constraint)

    def _file_variables(self) -> list[keras.Variable]:
        """The variables in the order ``.keras`` and ``.weights.h5`` files hold them:
        normlab 0.1.0's (``gamma``, ``beta``, ``learned_epsilon``, ``tau``), which
        ``get_weights``' (TF Addons', ``learned_epsilon`` first) would otherwise misread."""
        return [v for v in (self.gamma, self.beta, self.eps_learned, self.tau) if v is not None]

    def save_own_variables(self, store: Any) -> None:
        for i, variable in enumerate(self._file_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store: Any) -> None:
        variables = self._file_variables()
        if len(store.keys()) != len(variables):
            super().load_own_variables(store)  # (its error)
            return
        if self.eps_learned is not None and variables[0] is not self.eps_learned and tuple(store["0"].shape) == (1,) \
                and tuple(variables[0].shape) != (1,):  # a file written with get_weights' order (0.2.0 pre-releases)
            variables = [self.eps_learned, *(v for v in variables if v is not self.eps_learned)]
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def call(self, inputs: Tensor) -> Tensor:
        y = ops.filter_response_norm(
            self.float_input(inputs),
            axis=self._spatial_axes if isinstance(self.axis, list) else self._channel_axis,
            gamma=self.gamma,
            beta=self.beta,
            epsilon=self.epsilon,
            learned_epsilon=self.eps_learned,
            tau=self.tau,
        )
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "learned_epsilon": self.learned_epsilon,
            "learned_epsilon_constraint": constraints.serialize(self.learned_epsilon_constraint),
            "use_tlu": self.use_tlu,
            "tau_initializer": initializers.serialize(self.tau_initializer),
            "tau_regularizer": regularizers.serialize(self.tau_regularizer),
            "tau_constraint": constraints.serialize(self.tau_constraint),
        }
