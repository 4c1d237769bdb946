"""DynamicTanh (Zhu et al., 2025)."""

from __future__ import annotations

from typing import Any

import keras
from keras import constraints, initializers, regularizers

from normlab import ops
from normlab.layers.base import Normalization, keras_object
from normlab.ops.validate import check_real
from normlab.types import Axis, Constraint, Initializer, Regularizer, Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class DynamicTanh(Normalization):
    """Dynamic Tanh (DyT): replaces a LayerNormalization with a learned tanh, computing no statistics.

    Each element is squashed by a tanh with one learned scale ``alpha``,
    then scaled and shifted per feature like a normalization's output:

        y = tanh(alpha * x) * gamma + beta

    Zhu et al. found that layer norms in trained Transformers map their
    inputs along tanh-shaped curves, and that DyT in their place matches
    them (ViT, ConvNeXt, DiT, LLaMA) with no reductions; in their
    preliminary experiments it did not directly replace batch norm in
    classic ConvNets such as ResNets (``normlab compare --norms batch dyt``
    compares the two on MNIST). As nothing is reduced, the output does not
    depend on the batch, the sequence length or the layout,
    and there is no ``epsilon``. Weights, in the order of the paper's code
    (``alpha``, ``weight``, ``bias``): ``alpha`` of shape ``(1,)``, then
    ``gamma`` and ``beta`` of the shape of the input at ``axis``, so weights
    copied from it need no reshaping.

    Args:
        axis: an int or a list of ints, never the batch axis: the features
            ``gamma`` and ``beta`` apply to, as in the LayerNormalization
            it replaces. Default -1; 1 for channels-first (the paper's
            ``channels_last=False``).
        alpha_init_value: the initial ``alpha``, a positive float. Default
            0.5 (the paper's value; it tunes it down for wide LLMs).
        center: add a learned offset ``beta``. Default True.
        scale: multiply by a learned scale ``gamma``. Default True.
        beta_initializer: initializer for ``beta``. Default "zeros".
        gamma_initializer: initializer for ``gamma``. Default "ones".
        alpha_regularizer: optional regularizer for ``alpha``. Default None.
        beta_regularizer: optional regularizer for ``beta``. Default None.
        gamma_regularizer: optional regularizer for ``gamma``. Default None.
        alpha_constraint: optional constraint for ``alpha``. Default None.
        beta_constraint: optional constraint for ``beta``. Default None.
        gamma_constraint: optional constraint for ``gamma``. Default None.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")   # (batch, tokens, features)
        >>> dyt = normlab.layers.DynamicTanh()
        >>> y = keras.ops.convert_to_numpy(dyt(x))
        >>> bool(np.allclose(y, np.tanh(0.5 * x), atol=1e-6))                   # gamma = 1, beta = 0 at first
        True
        >>> [tuple(w.shape) for w in dyt.weights]
        [(1,), (8,), (8,)]

    Reference:
        Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization",
        CVPR 2025. https://arxiv.org/abs/2503.10622
    """

    multi_axis = True

    def __init__(
        self,
        axis: Axis = -1,
        alpha_init_value: float = 0.5,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        alpha_regularizer: Regularizer = None,
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        alpha_constraint: Constraint = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        **kwargs: Any,
    ) -> None:
        if "epsilon" in kwargs:  # the base class takes one: it would collide with the fixed 0 below
            raise ValueError(f"Unrecognized keyword arguments passed to DynamicTanh: "
                             f"{{'epsilon': {kwargs['epsilon']!r}}}. DynamicTanh divides by no variance, so it "
                             "takes no epsilon: remove it (alpha_init_value sets its input scale).")
        super().__init__(
            axis=axis,
            epsilon=0.0,  # no variance to guard: the base's epsilon is unused and not in the config
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
        self.alpha_init_value = check_real("alpha_init_value", alpha_init_value, minimum=0.0, strict=True,
                                           example="0.5")
        self.alpha_regularizer = keras_object("regularizer", "alpha_regularizer", alpha_regularizer)
        self.alpha_constraint = keras_object("constraint", "alpha_constraint", alpha_constraint)
        self.alpha: Tensor | None = None

    def build(self, input_shape: Shape) -> None:
        shape = self.build_feature_axes(input_shape)
        self.alpha = self.add_weight(
            name="alpha", shape=(1,), initializer=initializers.Constant(self.alpha_init_value),
            regularizer=self.alpha_regularizer, constraint=self.alpha_constraint, trainable=True, autocast=False,
        )
        self.add_affine(shape)

    def call(self, inputs: Tensor) -> Tensor:
        x = self.float_input(inputs)
        y = ops.dynamic_tanh(x, self.alpha, axis=self.feature_axes(x), gamma=self.gamma, beta=self.beta)
        return self.compute_output(y)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["epsilon"]
        return {
            **config,
            "alpha_init_value": self.alpha_init_value,
            "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
            "alpha_constraint": constraints.serialize(self.alpha_constraint),
        }
