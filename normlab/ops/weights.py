"""Weight reparametrizations: standardization, weight norm, spectral norm.

These normalize a layer's *kernel* rather than its activations. Every one
works on a kernel of any rank whose **last axis is the output axis** (the
Keras layout: ``(in, out)`` for Dense, ``(*kernel_size, in // groups, out)``
for convolutions), computes in float32 at least (float64 stays float64) and
returns the kernel's dtype (float32 for an integer or bool kernel; a complex
one is refused).

* :func:`standardize_weight` (Qiao et al. 2019; scaled form Brock et al.
  2021) takes its mean and variance with
  :func:`~normlab.ops.moments.moments` and applies them with
  :func:`~normlab.ops.normalize.normalize`, like every activation norm.
* :func:`weight_norm` (Salimans & Kingma 2016) divides by an L2 norm, a sum
  of squares about zero: there is nothing to subtract, so it is summed
  directly in the statistics dtype.
* :func:`power_iteration` and :func:`spectral_norm` (Miyato et al. 2018)
  estimate the largest singular value of the kernel seen as a
  ``(fan_in, out)`` matrix, as TF Addons and Keras do.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
from keras import ops

from normlab.ops.arith import at_least, matmul
from normlab.ops.axes import canonicalize_axes, float_tensor
from normlab.ops.moments import shifted_moments, stats_dtype, widened
from normlab.ops.normalize import normalize
from normlab.ops.sharding import laid_out_as, split_axes
from normlab.ops.validate import check_epsilon, error_message
from normlab.types import Axis, Tensor


def _fan_in_axes(kernel: Tensor, axes: Axis | None, argument: str = "axes") -> list[int]:
    """``axes`` validated against the kernel's rank; None means all but the last."""
    ndim = len(kernel.shape)
    if ndim < 1 or (axes is None and ndim < 2):
        raise ValueError(
            error_message(
                "kernel",
                "a tensor of rank >= 2 whose last axis is the output axis (or, with `axes`, rank >= 1)",
                f"kernel.shape={tuple(kernel.shape)}, so no fan-in axes (all but the last) to normalize over",
                "Pass a layer's kernel, e.g. of shape (in, out) or (kh, kw, in, out); to normalize "
                "a vector as a whole, pass axes=[0].",
            )
        )
    if axes is None:
        return list(range(ndim - 1))
    return canonicalize_axes(axes, ndim, argument=argument, allow_batch=True)


def _keep_shape(kernel: Tensor, axes: Sequence[int]) -> list[int]:
    """The kernel's shape with the reduced ``axes`` set to 1."""
    return [1 if a in axes else int(d) for a, d in enumerate(kernel.shape)]


def _check_per_output(name: str, value: Tensor | None, kernel: Tensor, axes: Sequence[int]) -> Tensor | None:
    """Reshapes a per-output parameter so it broadcasts against ``kernel``."""
    if value is None:
        return None
    value = float_tensor(value, name)
    keep = _keep_shape(kernel, axes)
    outputs = [d for d in keep if d != 1] or [1]
    size = 1
    for d in keep:
        size *= d
    shape = tuple(value.shape)
    n = 1
    for d in shape:
        n *= int(d)
    # One value, or the outputs' shape with any size-1 axes: a (4, 3) gain for
    # (3, 4) outputs, or a flat (12,) one, has the size but not the order.
    if n != 1 and [int(d) for d in shape if d != 1] != [d for d in keep if d != 1]:
        raise ValueError(
            error_message(
                name,
                f"one value per output unit: shape {tuple(outputs)} or {tuple(keep)}",
                f"{name}.shape={shape} for kernel.shape={tuple(kernel.shape)}",
                "Pass a vector with the kernel's last dimension, e.g. "
                f"ones of shape ({int(kernel.shape[-1])},).",
            )
        )
    return ops.reshape(value, keep) if n == size else ops.reshape(value, [1] * len(keep))


# epsilon of the L2 norms: zero would give 0 * inf = NaN for a zero kernel
_NORM_EPSILON: dict[str, Any] = dict(
    positive=True, role="it bounds each squared norm from below",
    reason="; a zero kernel would give NaN with epsilon=0")


def _l2_normalize(x: Tensor, epsilon: float) -> Tensor:
    """``x / sqrt(max(sum(x**2), epsilon))`` over all of ``x`` (TF's l2_normalize)."""
    return x * ops.rsqrt(at_least(ops.sum(ops.square(x)), epsilon))


def standardize_weight(
    kernel: Tensor, axes: Axis | None = None, epsilon: float = 1e-6, gain: Tensor | None = None
) -> Tensor:
    """Weight standardization: zero mean, unit variance per output unit.

    Formula: for each output unit (each index of the axes not in ``axes``),
    ``mean`` and biased ``var`` of the kernel over ``axes`` (its fan-in);
    ``w_hat = (w - mean) / sqrt(var + epsilon) * gain``.

    With ``gain = gamma * g / sqrt(fan_in)`` this is the scaled weight
    standardization of NF-Nets (timm's ``ScaledStdConv2d``).

    Args:
        kernel: the kernel, any rank, output units on the axes not in ``axes``.
        axes: the fan-in axes to standardize over. Default None: every axis
            but the last (the Keras kernel layout).
        epsilon: added to the variance. Default 1e-6 (a kernel's variance is
            about 1/fan_in, so the activation norms' 1e-3 would be far too large).
        gain: optional per-output scale, shape ``(out,)`` or broadcastable
            with the reduced axes kept as 1. Default None (1).

    Returns:
        A tensor with the shape and dtype of ``kernel`` (float32 for an integer one).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import standardize_weight
        >>> w = np.random.default_rng(0).normal(0.3, 2.0, size=(3, 3, 4, 8)).astype("float32")
        >>> w_hat = ops.convert_to_numpy(standardize_weight(w))
        >>> flat = w_hat.reshape(-1, 8)                 # fan-in x outputs
        >>> bool(np.allclose(flat.mean(0), 0, atol=1e-5)), bool(np.allclose(flat.std(0), 1, atol=1e-4))
        (True, True)

    Reference:
        Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
        Batch-Channel Normalization and Weight Standardization", 2019.
        https://arxiv.org/abs/1903.10520
    """
    kernel = float_tensor(kernel, "kernel")
    axes = _fan_in_axes(kernel, axes)
    epsilon = check_epsilon(epsilon)
    gain = _check_per_output("gain", gain, kernel, axes)
    fan_in = [int(kernel.shape[a]) for a in axes]
    if fan_in and all(d == 1 for d in fan_in):
        raise ValueError(error_message(
            "kernel", "more than one weight per output unit (a fan-in > 1)",
            f"kernel.shape={tuple(kernel.shape)}, standardized over axes={axes} (fan-in 1)",
            "One weight standardizes to 0, so every output would be the bias. A weight-"
            "standardized convolution with a 1x1 kernel needs more than one input channel "
            "per group: use a plain convolution there."))
    wide = widened(kernel)
    shift, mean, var = shifted_moments(wide, axes)  # exact at any offset, as every norm
    return ops.cast(normalize(wide, mean, var, shift=shift, gamma=gain, epsilon=epsilon), kernel.dtype)


def weight_norm(
    kernel: Tensor, g: Tensor | None = None, axes: Axis | None = None, epsilon: float = 1e-12
) -> Tensor:
    """Weight normalization: each output unit's weight vector scaled to norm ``g``.

    Formula: ``w = g * v / sqrt(max(sum(v**2 over axes), epsilon))``, the
    L2 norm taken per output unit over ``axes`` (TF's ``l2_normalize``
    placement of ``epsilon``, as in TF Addons).

    Args:
        kernel: the direction ``v``, any rank, outputs on the axes not in ``axes``.
        g: optional per-output norm, shape ``(out,)``. Default None (unit norm).
        axes: the axes the norm runs over. Default None: all but the last.
        epsilon: lower bound of the squared norm. Default 1e-12.

    Returns:
        A tensor with the shape and dtype of ``kernel`` (float32 for an integer one).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import weight_norm
        >>> v = np.array([[3.0, 0.0], [4.0, 2.0]], "float32")     # (in=2, out=2)
        >>> ops.convert_to_numpy(weight_norm(v, g=np.array([1.0, 5.0], "float32"))).tolist()
        [[0.6000000238418579, 0.0], [0.800000011920929, 5.0]]

    Reference:
        Salimans & Kingma, "Weight Normalization: A Simple Reparameterization
        to Accelerate Training of Deep Neural Networks", NeurIPS 2016.
        https://arxiv.org/abs/1602.07868
    """
    kernel = float_tensor(kernel, "kernel")
    axes = _fan_in_axes(kernel, axes)
    epsilon = check_epsilon(epsilon, **_NORM_EPSILON)
    g = _check_per_output("g", g, kernel, axes)
    dtype = stats_dtype(kernel.dtype)
    v = ops.cast(kernel, dtype)
    scale = ops.rsqrt(at_least(ops.sum(ops.square(v), axis=axes, keepdims=True), epsilon))
    if g is not None:
        scale = scale * ops.cast(g, dtype)
    return ops.cast(v * scale, kernel.dtype)


def _check_iterations(power_iterations: object, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if (
        isinstance(power_iterations, bool)
        or not isinstance(power_iterations, numbers.Integral)
        or power_iterations < low
    ):
        raise ValueError(
            error_message(
                "power_iterations",
                f"an integer >= {low} (power-iteration steps per training call)",
                f"power_iterations={power_iterations!r}",
                "Use power_iterations=1 (the paper's choice; the estimate improves "
                "across steps because `u` persists).",
            )
        )
    return int(power_iterations)


def _matrix_and_u(kernel: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    kernel = float_tensor(kernel, "kernel")
    if len(kernel.shape) < 2:
        raise ValueError(
            error_message(
                "kernel",
                "a tensor of rank >= 2 (seen as a (fan_in, out) matrix)",
                f"kernel.shape={tuple(kernel.shape)}",
                "Pass a Dense, Conv or Embedding kernel.",
            )
        )
    if 0 in kernel.shape:  # (no singular value: the power iteration would divide 0 by 0)
        raise ValueError(error_message(
            "kernel", "a kernel with at least one input and one output", f"kernel.shape={tuple(kernel.shape)}",
            "A layer with no units or no inputs has nothing to normalize: leave it unwrapped."))
    out = int(kernel.shape[-1])
    dtype = stats_dtype(kernel.dtype)
    matrix = ops.reshape(ops.cast(kernel, dtype), (-1, out))
    return kernel, matrix, ops.cast(_check_u(u, kernel, "kernel"), dtype)


def _check_u(u: Tensor, matrix: Tensor, name: str = "matrix") -> Tensor:
    """``u`` as shape ``(1, m)``: it must hold one value per column of ``matrix`` (its last dimension)."""
    out = int(matrix.shape[-1])
    if isinstance(u, (np.ndarray, list, tuple)):  # host values, read for free (a device tensor is not: a sync)
        array = np.asarray(u)
        host = array.astype("float64") if array.dtype.kind in "biuf" else None
        if host is not None and host.size and not (np.all(np.isfinite(host)) and np.any(host != 0)):
            raise ValueError(error_message(
                "u", "a finite, nonzero vector (a zero one gives sigma 0, hence a kernel scaled by 1 / epsilon)",
                f"u={u!r}", f"Start from a random vector of shape (1, {out})."))
    u = float_tensor(u, "u")
    n = 1
    for d in u.shape:
        n *= int(d)
    if n != out:
        raise ValueError(
            error_message(
                "u",
                f"a vector of {out} values (the {name}'s last dimension), shape (1, {out})",
                f"u.shape={tuple(u.shape)} for {name}.shape={tuple(matrix.shape)}",
                f"Start from a random vector of shape (1, {out}).",
            )
        )
    return ops.reshape(u, (1, out))


def power_iteration(
    matrix: Tensor, u: Tensor, iterations: int = 1, epsilon: float = 1e-12
) -> tuple[Tensor, Tensor, Tensor]:
    """Estimates the top singular triplet of ``matrix`` by power iteration.

    Formula (``W`` of shape ``(n, m)``, ``u`` of shape ``(1, m)``, unit
    vectors by ``x / sqrt(max(sum(x**2), epsilon))``): ``u <- unit(u)``, then
    ``iterations`` times ``v <- unit(u W^T)``, ``u <- unit(v W)``; with zero
    iterations ``v = unit(u W^T)``. ``sigma = v W u^T``. ``u`` and ``v`` are
    returned without gradient (the paper's convention), ``sigma`` keeps the
    gradient with respect to ``W``. If ``W`` is zero, ``u`` is left as it was.

    Args:
        matrix: a 2-D tensor ``W``.
        u: the current right singular vector estimate, shape ``(1, m)``.
        iterations: power-iteration steps, >= 0. Default 1.
        epsilon: lower bound of squared norms. Default 1e-12.

    Returns:
        ``(u, v, sigma)`` with shapes ``(1, m)``, ``(1, n)`` and ``()``, in the
        statistics dtype of ``matrix``.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import power_iteration
        >>> w = np.diag([3.0, 1.0]).astype("float32")
        >>> u, v, sigma = power_iteration(w, np.array([[1.0, 1.0]], "float32"), iterations=20)
        >>> round(float(ops.convert_to_numpy(sigma)), 4)
        3.0

    Reference:
        Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
        Generative Adversarial Networks", ICLR 2018. https://arxiv.org/abs/1802.05957
    """
    iterations = _check_iterations(iterations, allow_zero=True)
    epsilon = check_epsilon(epsilon, **_NORM_EPSILON)
    matrix = float_tensor(matrix, "matrix")
    if len(matrix.shape) != 2:
        raise ValueError(error_message("matrix", "a 2-D tensor", f"matrix.shape={tuple(matrix.shape)}",
                                       "Reshape it to (n, m) first, e.g. a kernel to (-1, out)."))
    dtype = stats_dtype(matrix.dtype)
    return _power_iteration(ops.cast(matrix, dtype), ops.cast(_check_u(u, matrix), dtype), iterations, epsilon)


def _power_iteration(w: Tensor, u0: Tensor, iterations: int, epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`power_iteration` on checked arguments: ``w`` (n, m) and ``u0`` (1, m) in one dtype."""
    u = _l2_normalize(u0, epsilon)
    for _ in range(iterations):
        v = _l2_normalize(matmul(u, ops.transpose(w)), epsilon)
        u = _l2_normalize(matmul(v, w), epsilon)
    if iterations == 0:
        v = _l2_normalize(matmul(u, ops.transpose(w)), epsilon)
    u = ops.stop_gradient(u)
    v = ops.stop_gradient(v)
    sigma = ops.sum(matmul(v, w) * u)  # v W u^T without transposing u: jax2onnx mis-shapes a (1, 1) one
    # A zero matrix gives u = 0, from which no later step recovers: keep the old one
    # (in u's layout: JAX's explicit sharding splits u as it splits w's columns).
    if split_axes(u) != split_axes(u0):
        u0 = laid_out_as(u0, u)
    u = ops.where(ops.sum(ops.square(u)) > 0, u, u0)
    return u, v, sigma


def spectral_norm(
    kernel: Tensor, u: Tensor, power_iterations: int = 1, epsilon: float = 1e-12
) -> tuple[Tensor, Tensor, Tensor]:
    """Spectral normalization: the kernel divided by its largest singular value.

    Formula: ``W`` is the kernel reshaped to ``(fan_in, out)``; ``sigma`` is
    estimated by :func:`power_iteration` from ``u``; ``w = kernel / sigma``
    (``sigma`` bounded below by ``epsilon``, so a zero kernel stays zero).
    ``power_iterations=0`` refines nothing and gives ``sigma = |W unit(u)|``,
    the inference-time estimate (the returned ``u`` is then ``unit(u)``).

    Args:
        kernel: the kernel, rank >= 2, output units on the last axis.
        u: the persistent estimate of the right singular vector, shape ``(1, out)``:
            finite and nonzero (a NumPy one is checked; a device tensor is
            not, which would read it on the host: a zero one gives
            ``sigma = 0`` and a kernel scaled by ``1 / epsilon``).
        power_iterations: steps to refine ``u``, >= 0. Default 1.
        epsilon: lower bound of squared norms and of ``sigma``. Default 1e-12.

    Returns:
        ``(w, u, sigma)``: the normalized kernel in the kernel's dtype, the
        updated ``u`` (shape ``(1, out)``, no gradient) and ``sigma``.

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> from normlab.ops import spectral_norm
        >>> w = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype("float32")
        >>> u = np.random.default_rng(1).normal(size=(1, 8)).astype("float32")
        >>> w_sn, u, sigma = spectral_norm(w, u, power_iterations=30)
        >>> top = np.linalg.svd(ops.convert_to_numpy(w_sn).reshape(-1, 8), compute_uv=False)[0]
        >>> round(float(top), 4)
        1.0

    Reference:
        Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
        Generative Adversarial Networks", ICLR 2018. https://arxiv.org/abs/1802.05957
    """
    power_iterations = _check_iterations(power_iterations, allow_zero=True)
    epsilon = check_epsilon(epsilon, **_NORM_EPSILON)
    kernel, matrix, u = _matrix_and_u(kernel, u)
    u, _, sigma = _power_iteration(matrix, u, power_iterations, epsilon)
    sigma = at_least(sigma, epsilon)
    w = ops.cast(ops.cast(kernel, sigma.dtype) / sigma, kernel.dtype)
    return w, u, sigma
