"""Weight-standardized convolutions: StdConv (Qiao et al., 2019); the scaled
form, ScaledStdConv (Brock et al., 2021), is in :mod:`normlab.layers.scaled_std_conv`.

These are not activation norms: they are drop-in subclasses of
``keras.layers.Conv1D/2D/3D`` that standardize their *kernel* over its
fan-in before every convolution (training and inference alike). The
kernel variable itself keeps the raw, unstandardized values, so saving,
regularizers and optimizers see an ordinary convolution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import keras

from normlab.layers.base import SavedConfig, keras_object
from normlab.layers.derived_kernel import call_with_kernel, exclusive, full_precision, missing_layer
from normlab.layers.dtypes import check_float_policy
from normlab.ops.validate import check_bool, check_epsilon, check_positive_int, error_message
from normlab.ops.weights import standardize_weight
from normlab.types import Constraint, Initializer, Regularizer, Shape, Tensor

_NOT_CONV_ARGS = ("self", "__class__", "kwargs", "epsilon", "gamma", "gain_initializer")


def _conv_args(local_vars: dict[str, Any]) -> dict[str, Any]:
    """The Keras convolution arguments among a constructor's ``locals()``, the
    ones Keras takes unchecked (``filters=True``, ``use_bias='no'``) or
    reports without naming the argument (an initializer 'onez') checked here."""
    args = {k: v for k, v in local_vars.items() if k not in _NOT_CONV_ARGS}
    check_positive_int("filters", args["filters"], example=32)
    check_positive_int("groups", args["groups"], example=1)
    check_bool("use_bias", args["use_bias"])
    for name, value in args.items():
        kind = name.rpartition("_")[2]
        if name == "kernel_initializer" and value is None:  # Keras' default for a kernel: glorot_uniform
            continue
        if kind in ("initializer", "regularizer", "constraint"):
            keras_object(kind, name, value)  # type: ignore[arg-type]
    return args


if TYPE_CHECKING:  # the mixins come first in the bases of a Keras Conv1D/2D/3D and use its API
    from keras.layers import Conv2D as _KerasConv
else:
    _KerasConv = object


class _WeightStandardization(SavedConfig, _KerasConv):
    """Mixin: convolve with the standardized kernel, every call.

    Put before a Keras ``Conv1D``/``Conv2D``/``Conv3D`` in the bases; the
    constructor takes that convolution's arguments (Keras' defaults; an int
    stride or dilation applies to every spatial axis) plus ``epsilon``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str | Callable[[Tensor], Tensor] | None = None,
        use_bias: bool = True,
        kernel_initializer: Initializer = "glorot_uniform",
        bias_initializer: Initializer = "zeros",
        kernel_regularizer: Regularizer = None,
        bias_regularizer: Regularizer = None,
        activity_regularizer: Regularizer = None,
        kernel_constraint: Constraint = None,
        bias_constraint: Constraint = None,
        epsilon: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_conv_args(locals()), **kwargs)
        check_float_policy(self)
        self.epsilon = check_epsilon(epsilon, owner=type(self).__init__)

    def build(self, input_shape: Shape) -> None:
        channel_axis = -1 if self.data_format == "channels_last" else 1
        if input_shape[channel_axis] is None:  # Keras' convolutions fail on it with a TypeError
            raise ValueError(error_message(
                "inputs", f"a known number of input channels (axis {channel_axis}), since the kernel's shape "
                "depends on it", f"an input of shape {tuple(input_shape)}",
                "Give the channels a fixed size in keras.Input(shape=...)."))
        super().build(input_shape)

    def _fan_in_axes(self) -> list[int]:
        # Keras kernels are (*kernel_size, in_channels // groups, filters).
        return list(range(self.rank + 1))

    def _gain(self) -> Tensor | None:
        return None

    def standardized_kernel(self) -> Tensor:
        """The kernel the convolution uses (with a LoRA update, if enabled):
        standardized over its fan-in, from the float32 variables under mixed
        precision (float16 statistics lost the mean of a kernel at an offset)."""
        with full_precision(self.kernel):
            return standardize_weight(self.kernel, self._fan_in_axes(), self.epsilon, gain=self._gain())

    def call(self, inputs: Tensor) -> Tensor:
        with exclusive(self):  # (its kernel read while no other thread has the standardized one in place)
            return call_with_kernel(self, inputs, self.standardized_kernel(), call=super().call)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


_STD_DOC_ARGS = """
    Args:
        filters: number of output channels.
        kernel_size: int or tuple, the convolution window.
        strides: int or tuple. Default 1 (every spatial axis).
        padding: "valid" or "same"{causal}. Default "valid".
        data_format: "channels_last" or "channels_first"; None uses
            ``keras.config.image_data_format()``. Default None.
        dilation_rate: int or tuple. Default 1 (every spatial axis).
        groups: number of channel groups (grouped convolution). Default 1.
        activation: activation applied after the bias. Default None.
        use_bias: add a bias. Default True (timm's ``StdConv2d`` defaults to False).
        kernel_initializer: Default "glorot_uniform".
        bias_initializer: Default "zeros".
        kernel_regularizer: applied to the raw kernel. Default None.
        bias_regularizer: Default None.
        activity_regularizer: Default None.
        kernel_constraint: applied to the raw kernel. Default None.
        bias_constraint: Default None.
        epsilon: added to the kernel's variance. Default 1e-6 (timm's).{extra}
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``,
            ``lora_rank``, ``lora_alpha``)."""


def _doc(causal: str = "", extra: str = "") -> str:
    return _STD_DOC_ARGS.format(causal=causal, extra=extra)


@keras.saving.register_keras_serializable(package="normlab")
class StdConv1D(_WeightStandardization, keras.layers.Conv1D):
    __doc__ = (
        """1-D convolution with weight standardization: the kernel is standardized every call.

    For each output channel, the kernel's mean and variance are taken over
    its fan-in (kernel width x input channels per group), then

        w_hat = (w - mean) / sqrt(var + epsilon)
        y = conv(x, w_hat) + bias

    A drop-in for ``keras.layers.Conv1D`` with one extra argument.
"""
        + _doc(causal=' or "causal"')
        + """

    Example:
        >>> import numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 16, 3)).astype("float32")
        >>> conv = normlab.layers.StdConv1D(4, 3, padding="causal")
        >>> tuple(conv(x).shape)
        (2, 16, 4)

    Reference:
        Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
        Batch-Channel Normalization and Weight Standardization", 2019.
        https://arxiv.org/abs/1903.10520
    """
    )


@keras.saving.register_keras_serializable(package="normlab")
class StdConv2D(_WeightStandardization, keras.layers.Conv2D):
    __doc__ = (
        """2-D convolution with weight standardization: the kernel is standardized every call.

    For each output channel, the kernel's mean and variance are taken over
    its fan-in (kernel height x width x input channels per group), then

        w_hat = (w - mean) / sqrt(var + epsilon)
        y = conv(x, w_hat) + bias

    so every filter has zero mean and unit variance whatever the optimizer
    does to the raw kernel. Usually paired with GroupNormalization (BiT,
    ResNet-v2 "GN+WS"). A drop-in for ``keras.layers.Conv2D`` with one extra
    argument; channels-first works through ``data_format``.
"""
        + _doc()
        + """

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
        >>> conv = normlab.layers.StdConv2D(16, 3, padding="same", use_bias=False)
        >>> tuple(conv(x).shape)
        (2, 8, 8, 16)
        >>> w = keras.ops.convert_to_numpy(conv.standardized_kernel()).reshape(-1, 16)  # fan-in x filters
        >>> bool(np.allclose(w.mean(0), 0, atol=1e-6)), bool(np.allclose(w.std(0), 1, atol=1e-3))
        (True, True)

    Reference:
        Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
        Batch-Channel Normalization and Weight Standardization", 2019.
        https://arxiv.org/abs/1903.10520
    """
    )


@keras.saving.register_keras_serializable(package="normlab")
class StdConv3D(_WeightStandardization, keras.layers.Conv3D):
    __doc__ = (
        """3-D convolution with weight standardization: the kernel is standardized every call.

    For each output channel, the kernel's mean and variance are taken over
    its fan-in (kernel depth x height x width x input channels per group):

        w_hat = (w - mean) / sqrt(var + epsilon)
        y = conv(x, w_hat) + bias

    A drop-in for ``keras.layers.Conv3D`` with one extra argument.
"""
        + _doc()
        + """

    Example:
        >>> import numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(size=(1, 2, 5, 5, 5)).astype("float32")
        >>> conv = normlab.layers.StdConv3D(4, 3, data_format="channels_first")
        >>> tuple(conv(x).shape)
        (1, 4, 3, 3, 3)

    Reference:
        Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
        Batch-Channel Normalization and Weight Standardization", 2019.
        https://arxiv.org/abs/1903.10520
    """
    )


_STD_CONVS = {1: StdConv1D, 2: StdConv2D, 3: StdConv3D}


def _replacement(
    spec: str, layer: keras.layers.Layer | None, classes: Mapping[int, type[_WeightStandardization]], **arguments: Any
) -> Any:
    if layer is None:
        raise missing_layer(spec, "a Conv1D, Conv2D or Conv3D layer")
    plain = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    if not isinstance(layer, plain) or isinstance(layer, _WeightStandardization):
        raise ValueError(
            error_message(
                "layer",
                "a keras.layers.Conv1D, Conv2D or Conv3D to replace by its weight-standardized twin",
                f"layer={type(layer).__name__}(name={getattr(layer, 'name', None)!r})",
                "Pass a plain convolution, e.g. keras.layers.Conv2D(16, 3).",
            )
        )
    config = layer.get_config()
    # Keras' Conv fills a weight whose initializer is None with glorot_uniform (the twin's
    # constructor refuses None): the twin is given that. Constructed directly, not by
    # from_config, which makes every error of the constructor a TypeError behind the config.
    config.update({k: "glorot_uniform" for k, v in config.items() if k.endswith("_initializer") and v is None})
    return classes[layer.rank](**{**config, **arguments})


def weight_standardization(
    layer: keras.layers.Layer | None = None, epsilon: float = 1e-6, **kwargs: Any
) -> StdConv1D | StdConv2D | StdConv3D:
    """Conv modifier, not an activation norm: the StdConv twin of the convolution given as ``layer=``.

    Returns a new, unbuilt :class:`StdConv1D`/``2D``/``3D`` with ``layer``'s
    configuration (weights are not copied) and ``epsilon``; the registry's
    factory for ``"weight_std"``.
    """
    return _replacement("weight_std", layer, _STD_CONVS, epsilon=epsilon, **kwargs)


