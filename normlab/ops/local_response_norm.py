"""Local response normalization across channels (Krizhevsky et al., 2012), PyTorch's semantics."""

from __future__ import annotations

from keras import ops

from normlab.ops.axes import channel_axis, float_tensor
from normlab.ops.moments import stats_dtype
from normlab.ops.validate import check_positive_int, check_real
from normlab.types import Tensor


def local_response_norm(
    x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, axis: int = -1
) -> Tensor:
    """Local response normalization across channels, with PyTorch's semantics.

    Formula: ``y_c = x_c / (k + alpha / size * sum_{j=c-size//2}^{c+(size-1)//2} x_j^2) ** beta``,
    where channels outside ``[0, C)`` count as zeros. Equal to
    ``torch.nn.functional.local_response_norm(x, size, alpha, beta, k)`` for
    channels-first ``x`` and ``axis=1``. TensorFlow's
    ``tf.nn.local_response_normalization(x, r, bias, a, b)`` is
    ``size=2r+1, k=bias, alpha=a*(2r+1), beta=b`` here (TF does not divide
    ``alpha`` by the window size).

    Args:
        x: input of rank >= 2, batch first.
        size: number of neighbouring channels summed over, a positive int. Default 5.
        alpha: scale of the sum of squares (divided by ``size``). Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant, > 0. Default 1.0 (AlexNet used k=2).
        axis: the channel axis. Default -1 (channels-last); 1 for channels-first.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import local_response_norm
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> y = ops.convert_to_numpy(local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0))
        >>> y.astype("float64").round(4).tolist()    # x / (1 + x_{c-1}^2 + x_c^2 + x_{c+1}^2)
        [[0.1667, 0.1333, 0.2143]]

    Reference:
        Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NeurIPS 2012, section 3.3.
    """
    x = float_tensor(x)
    ndim, a, channels = channel_axis(x, axis)
    size = check_positive_int("size", size, example=5, meaning="the number of channels in the window")
    alpha = check_real("alpha", alpha, minimum=0.0, example="1e-4")
    beta = check_real("beta", beta, example="0.75")
    k = check_real("k", k, minimum=0.0, strict=True, example="1.0")
    dtype = stats_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    last = a == ndim - 1  # no transpose at all for channels-last data (exporters keep identity ones)
    square = ops.square(xs) if last else ops.moveaxis(ops.square(xs), a, -1)
    # Zero padding by concatenation: keras.ops.pad builds a Keras Operation on
    # every eager call, whose generated name torch.compile guards on (a
    # recompile per call).
    # A window reaches at most channels - 1 to either side: wider, it adds zeros only (size=10**6 made
    # a million slices), so the padding stops there, and the sums are the same, bit for bit.
    before, after = min(size // 2, channels - 1), min((size - 1) // 2, channels - 1)
    zero = ops.zeros_like(square[..., :1])
    padded = ops.concatenate([zero] * before + [square] + [zero] * after, axis=-1)
    total = padded[..., 0:channels]
    for j in range(1, before + after + 1):
        total = total + padded[..., j:j + channels]
    # divisor ** -beta as exp(-beta * log(divisor)) (divisor >= k > 0): every
    # exporter has exp and log, not all a power with a broadcast exponent.
    scale = ops.exp(-beta * ops.log(k + (alpha / size) * total))
    return ops.cast(xs * (scale if last else ops.moveaxis(scale, -1, a)), x.dtype)
