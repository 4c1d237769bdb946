"""LocalResponseNormalization (Krizhevsky et al., 2012)."""

from __future__ import annotations

from typing import Any

import keras

from normlab import ops
from normlab.layers.dtypes import FloatCompute, check_float_policy
from normlab.ops.axes import canonicalize_axes, known_dims, reject_batch_axis, single_axis
from normlab.ops.validate import (
    check_positive_int,
    check_real,
)
from normlab.types import Shape, Tensor


@keras.saving.register_keras_serializable(package="normlab")
class LocalResponseNormalization(FloatCompute, keras.layers.Layer):
    """Local response normalization: each channel is damped by its neighbours' energy.

    Every activation is divided by a power of the sum of squares over a
    window of ``size`` neighbouring channels at the same position (zero
    padding past the first and last channel):

        y_c = x_c / (k + alpha / size * sum_{j = c - size//2}^{c + (size-1)//2} x_j^2) ** beta

    This is PyTorch's ``torch.nn.LocalResponseNorm(size, alpha, beta, k)``
    (``alpha`` divided by ``size``, window ``[c - size//2, c + (size-1)//2]``),
    for any rank and either channel layout. TensorFlow's
    ``tf.nn.local_response_normalization(depth_radius=r, bias, alpha=a, beta)``
    equals ``size=2r+1, k=bias, alpha=a*(2r+1), beta=beta`` here. No weights.

    Args:
        size: number of neighbouring channels in the window, a positive int. Default 5.
        alpha: scale of the summed squares (divided by ``size``), >= 0. Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant, > 0. Default 1.0 (PyTorch's default; AlexNet used 2).
        axis: the channel axis; any axis but the batch axis. Default -1
            (channels-last); use 1 for channels-first, as in PyTorch.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 4, 4)).astype("float32")   # NCHW
        >>> lrn = normlab.layers.LocalResponseNormalization(size=3, alpha=1.0, beta=0.5, k=2.0, axis=1)
        >>> y = keras.ops.convert_to_numpy(lrn(x))
        >>> window = np.pad(x ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))               # zero padding
        >>> sums = window[:, :-2] + window[:, 1:-1] + window[:, 2:]
        >>> bool(np.allclose(y, x / np.sqrt(2.0 + sums / 3), atol=1e-6))
        True

    Reference:
        Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NeurIPS 2012, section 3.3.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, axis: int = -1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_float_policy(self)
        self.size = check_positive_int("size", size, example=5, meaning="the number of channels in the window")
        self.alpha = check_real("alpha", alpha, minimum=0.0, example="1e-4")
        self.beta = check_real("beta", beta, example="0.75")
        self.k = check_real("k", k, minimum=0.0, strict=True, example="1.0")
        self.axis = single_axis(axis, type(self).__name__)
        reject_batch_axis([self.axis], axis)
        self.supports_masking = True
        self.autocast = False

    def build(self, input_shape: Shape) -> None:
        (self._channel_axis,) = canonicalize_axes(self.axis, len(input_shape))
        (channels,) = known_dims(input_shape, [self._channel_axis], axis=self.axis,
                                 reason="the window's sums are built per channel")
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={self._channel_axis: channels})

    def call(self, inputs: Tensor) -> Tensor:
        y = ops.local_response_norm(
            self.float_input(inputs), size=self.size, alpha=self.alpha, beta=self.beta, k=self.k,
            axis=self._channel_axis,
        )
        return self.compute_output(y)

    def compute_output_shape(self, input_shape: Shape) -> tuple[int | None, ...]:
        canonicalize_axes(self.axis, len(input_shape))  # an axis out of range raises, as at build
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "size": self.size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
            "axis": self.axis,
        }
