"""AdaptiveInstanceNormalization (Huang & Belongie, 2017)."""

from __future__ import annotations

from typing import Any, Sequence

import keras

from normlab import ops
from normlab.layers.dtypes import FloatCompute, check_float_policy
from normlab.ops.adaptive_instance_norm import check_content_and_style
from normlab.ops.axes import single_axis
from normlab.ops.validate import check_epsilon, error_message
from normlab.types import Shape, Tensor

_TWO_INPUTS = "a list of two inputs, [content, style]"
_CALL_FIX = "Call the layer on both: AdaptiveInstanceNormalization()([content, style])."


def _shape(value: Any) -> tuple[Any, ...]:
    """A tensor's shape, or a shape as it is (``build`` receives shapes)."""
    return tuple(getattr(value, "shape", value))


def _several(value: Any) -> bool:
    """Whether ``value`` holds several inputs (tensors, or the shapes ``build``
    receives), not one input or one shape (a tuple of ints and Nones)."""
    return isinstance(value, (list, tuple)) and not all(isinstance(d, (int, type(None))) for d in value)


def _received(value: Any) -> str:
    """How a wrong ``inputs`` is named in an error: its shape(s), never its values."""
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    if _several(value):
        return f"{len(value)} inputs of shapes {[_shape(v) for v in value]}"
    return f"one input of shape {_shape(value)}"


@keras.saving.register_keras_serializable(package="normlab")
class AdaptiveInstanceNormalization(FloatCompute, keras.layers.Layer):
    """Adaptive instance normalization (AdaIN): restyles one feature map with another's statistics.

    Called on ``[content, style]``, it normalizes each channel of each
    content sample over its spatial axes, then gives it the mean and
    standard deviation of the same channel of the style sample:

        y = (content - mean(content)) / std(content) * std(style) + mean(style)

    with ``std = sqrt(var + epsilon)``, the biased variance and the mean over
    the spatial axes, per sample and channel. It is the layer of arbitrary
    style transfer, where both inputs are an encoder's features of a content
    and a style image, and a building block of conditional generators. It
    has no weights; the output has the content's shape and its mask.
    The style may have other spatial sizes than the content, and a batch of
    1 applies one style to every content sample.

    Args:
        axis: the channel axis of both inputs. Default -1 (channels-last);
            1 for channels-first, as in the paper's PyTorch code.
        epsilon: added to both variances, a non-negative float. Default 1e-5,
            as in the widely used PyTorch port (the authors' Lua code adds
            it to the content's variance only).
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> rng = np.random.default_rng(0)
        >>> content = rng.normal(size=(2, 16, 16, 8)).astype("float32")
        >>> style = rng.normal(3.0, 0.5, size=(2, 8, 8, 8)).astype("float32")
        >>> y = keras.ops.convert_to_numpy(normlab.layers.AdaptiveInstanceNormalization()([content, style]))
        >>> y.shape
        (2, 16, 16, 8)
        >>> bool(np.allclose(y.mean(axis=(1, 2)), style.mean(axis=(1, 2)), atol=1e-4))
        True

    Reference:
        Huang & Belongie, "Arbitrary Style Transfer in Real-time with
        Adaptive Instance Normalization", ICCV 2017. https://arxiv.org/abs/1703.06868
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_float_policy(self)
        self.axis = single_axis(axis, type(self).__name__)
        if self.axis == 0:
            raise ValueError(
                error_message("axis", "the channel axis, never the batch axis 0", f"axis={axis!r}",
                              "Use axis=-1 for channels-last or axis=1 for channels-first inputs.")
            )
        self.epsilon = check_epsilon(epsilon, owner=type(self).__init__)
        self.supports_masking = True
        self.autocast = False  # see normlab.layers.base: inputs keep their float dtype

    @staticmethod
    def _pair(inputs: Any) -> tuple[Any, Any]:
        """``(content, style)`` from ``inputs`` (tensors or shapes), or a clear error."""
        if _several(inputs) and len(inputs) == 2:
            return inputs[0], inputs[1]
        raise ValueError(error_message("inputs", _TWO_INPUTS, _received(inputs), _CALL_FIX))

    def build(self, input_shape: Sequence[Shape]) -> None:
        content_shape, style_shape = self._pair(input_shape)
        a = check_content_and_style(content_shape, style_shape, self.axis)
        channels = content_shape[a]
        spec = keras.layers.InputSpec(ndim=len(content_shape), axes={a: channels})
        self.input_spec = [spec, spec]

    def call(self, inputs: Sequence[Tensor]) -> Tensor:
        content, style = self._pair(inputs)
        y = ops.adaptive_instance_norm(self.float_input(content), self.float_input(style), axis=self.axis,
                                       epsilon=self.epsilon)
        return self.compute_output(y)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> tuple[int | None, ...]:
        content_shape, style_shape = self._pair(input_shape)
        check_content_and_style(content_shape, style_shape, self.axis)  # raises as build does
        return tuple(content_shape)

    def compute_mask(self, inputs: Sequence[Tensor], mask: Sequence[Tensor | None] | None = None) -> Tensor | None:
        return None if mask is None else mask[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
