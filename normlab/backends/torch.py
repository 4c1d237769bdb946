"""PyTorch fast paths: fused normalization kernels that work about a
per-slice subsample mean, so that their result is exact to float rounding
with no decision on the host.

On the CPU, float32, bfloat16 and float16 group, instance and batch norm
(channels-last and channels-first; batch norm in training and with given
statistics) and layer and RMS norm over trailing axes run
normlab's compiled kernels (:mod:`normlab.backends.torch_cpu`,
:mod:`normlab.backends.cpu`), which subtract the shift as they read the
data: two reads each way, as ATen's kernels, and no centered copy (half
precision is widened to float32 as it is read). Everything else (float64,
or no C compiler to build them with) runs ATen's kernels on centered data,
as follows.

ATen on CPU (measured; see ``benchmarks/README.md``):

* ``native_group_norm`` reads the data once for its statistics and once to
  apply them, on channels-first (contiguous) and channels-last memory
  alike. Its statistics are not two-pass: on channels-last data it forms
  ``E[x^2] - E[x]^2`` (whole units wrong at an offset of 1000), and its
  Welford variant on contiguous data and its backward (``sum(dy * x)``,
  ``c2 * x + c3``) lose digits in proportion to the offset as well.
* ``native_layer_norm`` (trailing axes) and ``native_batch_norm`` behave
  alike: their statistics are fine or nearly so, but the apply step
  ``x * a + b`` and the backward round at the scale of the offset.

All of these errors grow like ``eps * (1 + r)``, ``r = (mean * rstd)^2`` the
offset ratio of the data the kernel sees (:mod:`normlab.backends.policy`).
Each hook therefore hands the kernel ``x - shift``, ``shift`` the mean of a
subsample of at least ``1 / MAX_SHIFT_RATIO`` of each slice (every 16th
position of channels-last data, the first 16th of each channel's or row's
contiguous positions otherwise; no gradient flows through it; normlab's
compiled rows kernels form it themselves, as they read each row): by
Cauchy-Schwarz ``r <= MAX_SHIFT_RATIO`` for every input, outliers included,
so no kernel result ever needs checking. Nothing reads a tensor's value on
the host: no device sync on a GPU, no data-dependent guard for a compiler.
The centered copy lives only during the kernel call: it is written into a
buffer kept per thread (freed by
:func:`~normlab.backends.torch_scratch.release_buffers`), and the backward
centers ``x`` again rather than keeping it
(:class:`~normlab.backends.torch_autograd.ShiftedNorm`), so a call
allocates what ATen alone would (the output, the gradient). The
subtraction is the price of exactness: one more pass over the input each
way (measured in ``benchmarks/README.md``).

CUDA tensors go first to the fused Triton kernels of
:mod:`normlab.backends.triton` (channels-last group and instance norm,
layer and RMS norm over trailing axes), where Triton is installed; what they
decline falls through to ATen as on the CPU.

Under ``torch.compile``, ``torch.export``/ONNX export and TorchScript
tracing the hooks decline (:func:`traced`; exporters get layer, RMS, group
and instance norm as :mod:`normlab.backends.torch_export` records them): the tracer then sees the
general path's plain differentiable ops, which inductor fuses itself, and
never a custom ``torch.autograd.Function`` (which the ONNX exporter cannot
take) or a loop over the batch. They decline as well inside ``torch.func``
transforms (``vmap``, ``grad``, ``jacrev``, ``jvp``) and under forward-mode
AD, which the general path's ops support.

Channels-last data ``(N, ..., C)`` is viewed without copying as a
``channels_last`` tensor of shape ``(N, C, S, 1)``; channels-first data
``(N, C, ...)`` as a contiguous ``(N, C, S)``. Other layouts (a channel axis
in the middle of a rank >= 4 tensor, non-contiguous strides, layer norm on
non-trailing axes) decline.

Statistics are in float32 at least: the centering subtraction of float16
and bfloat16 inputs produces float32 (the upcast and the centering are one
pass), and the result is cast back.
"""

from __future__ import annotations

import math
import sys

import torch
from keras import ops

from normlab.backends import torch_cpu, torch_export
from normlab.backends.policy import MAX_REDUCTION, MAX_SHIFT_RATIO, subsample_size
from normlab.backends.torch_autograd import (
    CHANNEL_BLOCK,
    BatchNormKernel,
    ChannelsLastBatchNorm,
    ChannelsLastGroupNorm,
    GroupNormKernel,
    LayerNormKernel,
    ShiftedNorm,
    center,
)
from normlab.backends.torch_guards import compute_dtype, traced, usable, values  # noqa: F401 (traced: public, see layers.weight_norm)

#: Positions between two rows of a channels-last subsample (its mean is the shift).
_STRIDE = int(MAX_SHIFT_RATIO)


#: normlab.backends.triton once imported, False where unavailable. Imported
#: at the first CUDA tensor, not with the package: ``import triton`` takes
#: time, and aborts a process that imported TensorFlow first (both carry
#: LLVM); the kernels then stay off.
_triton_kernels = None


def _triton(name, x, **kwargs):
    """The Triton kernel's result for a CUDA tensor, or None (declined, a CPU
    tensor, or Triton unavailable). Callers have checked :func:`~normlab.backends.torch_guards.usable`, so
    no tracer reaches the import below. CPU tensors reach the kernels only
    inside ``normlab.backends.triton.interpret_on_cpu()`` (tests)."""
    global _triton_kernels
    if not x.is_cuda and _triton_kernels is None:
        # A CPU tensor imports nothing; the kernels (which decline CPU tensors
        # outside interpret_on_cpu) are asked only once a test loaded them.
        loaded = sys.modules.get("normlab.backends.triton")
        return None if loaded is None else getattr(loaded, name)(x, **kwargs)
    if _triton_kernels is None:
        try:
            import normlab.backends.triton as kernels
        except ImportError:
            kernels = None
        _triton_kernels = kernels if kernels is not None and kernels.available() else False
    if _triton_kernels is False:
        return None
    return getattr(_triton_kernels, name)(x, **kwargs)


def _param(param, dtype, device):
    if param is None:
        return None
    if not isinstance(param, torch.Tensor):
        param = ops.convert_to_tensor(param)  # (a number or a list: on Keras' device, which x may not be on)
    return param if param.dtype == dtype and param.device == device else param.to(device=device, dtype=dtype)


def _downcast(y, like):
    return y if y.dtype == like.dtype else y.to(like.dtype)


# --------------------------------------------------------------------------
# Shifts: the mean of a subsample of each slice (policy.subsample_size of
# the positions), computed without gradient. Data is viewed as (N, S, C)
# for a last channel axis and as (N, C, S) for channel axis 1.


def _channel_view(x, axis):
    """``(x3, channels_last)``: ``x`` as ``(N, S, C)`` or ``(N, C, S)``
    without copying; None for a channel axis elsewhere."""
    n, c = x.shape[0], x.shape[axis]
    s = x.numel() // (n * c)
    if axis == x.ndim - 1:
        return x.view(n, s, c), True
    if axis == 1:
        return x.view(n, c, s), False
    return None, False


def _subsample(x3, channels_last):
    """``(sub, axis)``: a subsample of the positions of ``x3`` (detached:
    shifts carry no gradient) and its positions' axis. Every
    :data:`_STRIDE`-th row of channels-last data (contiguous rows of C
    values), the first positions of each channel otherwise (contiguous)."""
    x3 = x3.detach()
    if channels_last:
        return x3[:, ::_STRIDE], 1
    return x3[:, :, :subsample_size(x3.shape[2])], 2


def _sum_dtype(x, dtype, exact):
    """The dtype a shift's subsample is summed in. ``exact``: float64 (but on
    MPS, which has none), so that the shift is the subsample's mean correctly
    rounded, and a constant slice's shift its value. For ATen's kernels: a
    float32 sum of equal values rounds at its own scale (a slice at 1e6 got
    a shift several units of its last place off), and their one-pass
    variance of the residuals left then rounds to nonzero noise that a small
    ``epsilon`` amplifies (1.7e-3 off ``beta`` at epsilon 1e-12). normlab's
    compiled kernels subtract their own mean again before they scale: a
    float32 sum, faster, serves them."""
    return torch.float64 if exact and x.device.type != "mps" else dtype


def _group_shift(x3, channels_last, groups, dtype, exact):
    """The shift of each (sample, group), broadcast to its channels: ``(N, C)``."""
    sub, axis = _subsample(x3, channels_last)
    sums, k = sub.sum(dim=axis, dtype=_sum_dtype(x3, dtype, exact)), sub.shape[axis]
    n, c = sums.shape
    per = c // groups
    shift = (sums.view(n, groups, per).sum(dim=2, keepdim=True) / (k * per)).to(dtype)
    return shift.expand(n, groups, per).reshape(n, c)


def _row_shift(rows, dtype):
    """The shift of each row of ``(R, W)`` data, the mean of its first
    16th (contiguous): ``(R, 1)``; for ATen's kernels (exact, see :func:`_sum_dtype`)."""
    head = subsample_size(rows.shape[1])
    sums = rows.detach()[:, :head].sum(dim=1, keepdim=True, dtype=_sum_dtype(rows, dtype, True))
    return (sums / head).to(dtype)


def _batch_shift(x3, channels_last, dtype, exact):
    """The shift of each channel over the batch: ``(C,)``."""
    sub, axis = _subsample(x3, channels_last)
    return sub.mean(dim=(0, axis), dtype=_sum_dtype(x3, dtype, exact)).to(dtype)  # (one reduction)


# --------------------------------------------------------------------------
# Group and instance norm.


def group_norm(x, *, groups, axis, gamma, beta, epsilon):
    gamma, beta = values(gamma, beta)
    if torch_export.exporting():
        return torch_export.group_norm(x, groups, axis, gamma, beta, epsilon)
    if not usable(x, gamma, beta):
        return None
    y = _triton("group_norm", x, groups=groups, axis=axis, gamma=gamma, beta=beta, epsilon=epsilon)
    if y is not None:
        return y
    x3, channels_last = _channel_view(x, axis)
    if x3 is None:
        return None
    n, c = x.shape[0], x.shape[axis]
    s = x.numel() // (n * c)
    compute = compute_dtype(x.dtype)
    gamma, beta = _param(gamma, compute, x.device), _param(beta, compute, x.device)
    compiled = torch_cpu.served(x)
    if compiled and (s == 1 or not channels_last):
        # Rows of a group's C // groups channels of s positions each (a view: groups are runs).
        rows = x3.reshape(n * groups, (c // groups) * s)
        y, _, _ = torch_cpu.rows(rows, None, gamma, beta, epsilon, groups, s)  # the kernel's own shift
        return y.view(x.shape)
    shift = _group_shift(x3, channels_last, groups, compute, exact=not compiled)
    if compiled:
        y3, _, _ = torch_cpu.slices(x3, shift, gamma, beta, groups, epsilon)
        return y3.view(x.shape)
    if max(s * (c // groups), n * s) > MAX_REDUCTION:
        return None
    if channels_last:
        y3, _, _ = ChannelsLastGroupNorm.apply(x3, shift, gamma, beta, groups, epsilon)
    else:
        y3, _, _ = ShiftedNorm.apply(x3, shift, gamma, beta, GroupNormKernel(groups, epsilon))
    return _downcast(y3.reshape(x.shape), x)


# --------------------------------------------------------------------------
# Layer norm over trailing axes.


def layer_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = values(gamma, beta)
    if torch_export.exporting():
        return torch_export.layer_norm(x, axes, gamma, beta, epsilon)
    if not usable(x, gamma, beta):
        return None
    y = _triton("layer_norm", x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon)
    if y is not None:
        return y
    shape = _trailing(x, axes)
    if shape is None:
        return None  # only trailing axes are rows of ATen's kernel
    width = math.prod(shape)
    compute = compute_dtype(x.dtype)
    rows = x.view(-1, width)
    gamma, beta = _param(gamma, compute, x.device), _param(beta, compute, x.device)
    if torch_cpu.served(x):
        return torch_cpu.rows(rows, None, gamma, beta, epsilon)[0].view(x.shape)  # the kernel's own shift
    if max(width, x.numel() // width) > MAX_REDUCTION:
        return None
    y, _, _ = ShiftedNorm.apply(x, _row_shift(rows, compute), gamma, beta, LayerNormKernel(shape, epsilon))
    return _downcast(y, x)


def _trailing(x, axes):
    """The shape of ``x`` at ``axes`` where they are its trailing axes (rows
    of a contiguous tensor), else None."""
    k = len(axes)
    return tuple(x.shape[x.ndim - k:]) if list(axes) == list(range(x.ndim - k, x.ndim)) else None


# --------------------------------------------------------------------------
# RMS norm over trailing axes: Triton on CUDA, the compiled kernels' rows
# uncentered on the CPU (one read forward, two backward); the general path
# elsewhere (float64, no compiler: its two reductions are as fast as
# anything ATen offers).


def rms_norm(x, *, axes, gamma, beta, epsilon):
    gamma, beta = values(gamma, beta)
    if torch_export.exporting():
        return torch_export.rms_norm(x, axes, gamma, beta, epsilon)
    if not usable(x, gamma, beta):
        return None
    y = _triton("rms_norm", x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon)
    shape = _trailing(x, axes)
    if y is not None or shape is None or not torch_cpu.served(x):
        return y
    gamma, beta = _param(gamma, torch.float32, x.device), _param(beta, torch.float32, x.device)
    rows = x.view(-1, math.prod(shape))
    return torch_cpu.rows(rows, None, gamma, beta, epsilon, centered=False)[0].view(x.shape)


# --------------------------------------------------------------------------
# Batch norm in training.


class _BatchStats(torch.autograd.Function):
    """A fast path's batch ``(mean, variance)`` as they are, with their gradient as
    functions of ``x`` (the kernels return them as constants). The backward runs
    only where a loss uses them (never for the moving averages): it adds
    ``(dmean + 2 dvar (x - mean)) / n`` per channel to ``x``'s gradient, with
    ``x - mean`` formed as ``(x - shift) - residual mean`` (exact at an offset,
    where ``shift + residual mean`` rounds at the offset's scale). Under
    ``create_graph`` the residual mean is taken from ``x`` again, so that the
    second derivative sees the mean move with ``x``."""

    @staticmethod
    def forward(ctx, x, shift, residual_mean, variance, axis):
        ctx.save_for_backward(x, shift, residual_mean)
        ctx.axis = axis
        return shift + residual_mean, variance.clone()

    @staticmethod
    def backward(ctx, dmean, dvar):
        x, shift, residual_mean = ctx.saved_tensors
        shape = [1] * x.dim()
        shape[ctx.axis] = x.shape[ctx.axis]
        xc = x.to(shift.dtype) - shift.view(shape)
        if torch.is_grad_enabled():  # a double backward: the mean moves with x too (differentiably)
            xc = xc - xc.mean(dim=[d for d in range(x.dim()) if d != ctx.axis], keepdim=True)
        else:
            xc = xc - residual_mean.view(shape)
        dx = (dmean.view(shape) + 2.0 * dvar.view(shape) * xc) / (x.numel() // x.shape[ctx.axis])
        return dx.to(x.dtype), None, None, None, None


def _batch_stats(x, axis, shift, residual_mean, variance):
    """``(mean, variance)``, the mean being ``shift + residual_mean`` (all ``(C,)``)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _BatchStats.apply(x, shift, residual_mean, variance, axis % x.dim())
    # (A copy where a kernel's Function may have saved it for gamma's gradient: the caller may change it in place.)
    return shift + residual_mean, variance.clone() if torch.is_grad_enabled() else variance


def batch_norm_train(x, *, axis, gamma, beta, epsilon):
    gamma, beta = values(gamma, beta)
    if not usable(x, gamma, beta):
        return None
    x3, channels_last = _channel_view(x, axis)
    if x3 is None:
        return None
    c = x.shape[axis]
    count = x.numel() // c
    compute = compute_dtype(x.dtype)
    if channels_last:
        x3 = x3.view(1, count, c)  # the batch is one slice per channel
    compiled = torch_cpu.served(x)
    shift = _batch_shift(x3, channels_last, compute, exact=not compiled)
    gamma, beta = _param(gamma, compute, x.device), _param(beta, compute, x.device)
    if compiled:
        if channels_last:
            y, mean, variance = torch_cpu.slices(x3, shift.view(1, c), gamma, beta, c, epsilon)
        else:
            y, mean, variance = torch_cpu.planes(x3, shift, gamma, beta, epsilon)
        return y.view(x.shape), *_batch_stats(x, axis, shift.reshape(c), mean.view(c), variance.view(c))
    if count < 2 or count > MAX_REDUCTION:
        return None  # ATen's running variance is unbiased (undefined for one value)
    if channels_last and c % CHANNEL_BLOCK:
        xc = center(x3, shift.view(1, c), True).view(count, c)
        y, mean, variance = ChannelsLastBatchNorm.apply(xc, gamma, beta, epsilon)
    else:
        kernel = BatchNormKernel(channels_last, epsilon)
        y, mean, variance, _, _ = ShiftedNorm.apply(x3, shift.view(1, c), gamma, beta, kernel)
    return _downcast(y.reshape(x.shape), x), *_batch_stats(x, axis, shift.reshape(c), mean.reshape(c), variance)


# --------------------------------------------------------------------------
# Batch norm with given statistics (inference): the compiled CPU kernels
# (one read and one write forward; ATen's F.batch_norm folds the statistics
# into x * a + b, which rounds at the scale of the offset).


def batch_norm_infer(x, *, axis, mean, variance, gamma, beta, epsilon):
    mean, variance, gamma, beta = values(mean, variance, gamma, beta)
    if not usable(x, mean, variance, gamma, beta) or not torch_cpu.served(x):
        return None
    x3, channels_last = _channel_view(x, axis)
    if x3 is None:
        return None
    # (moved to x's device, the CPU: torch_cpu.served checked it)
    mean, variance, gamma, beta = (_param(t, torch.float32, x.device) for t in (mean, variance, gamma, beta))
    if torch.is_grad_enabled() and (mean.requires_grad or variance.requires_grad):
        return None  # the general path differentiates the statistics as well
    c = x.shape[axis]
    if channels_last:
        x3 = x3.view(-1, c, 1)
    # Copies: the kernel saves them for the backward, and a layer's moving statistics
    # are updated in place by its next training call, before that backward may run.
    mean, variance = (t.reshape(c).clone(memory_format=torch.contiguous_format) for t in (mean, variance))
    return torch_cpu.affine(x3, mean, variance, gamma, beta, epsilon).view(x.shape)
