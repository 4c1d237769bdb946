"""What the torch hooks hand an exporter (``torch.export``, the ONNX
exporters, TorchScript's tracer, through which Keras exports to OpenVINO): a
graph of standard operators that deployment runtimes have fused kernels for,
exact as the eager hooks are.

Elsewhere under a tracer (``torch.compile``, ``torch.func`` transforms) the
hooks decline and the general path's plain ops are traced. An exporter gets
ATen's ``layer_norm`` (trailing axes) or ``group_norm`` (channels-first or
channels-last; instance norm is one group per channel) of ``x`` less a
detached shift per slice: the mean of each row's first 16th, or of every 16th
position of a group's channels. The norm is unchanged by a shift and nothing
flows through it; it bounds the offset ratio of what the runtime's node sees
by :data:`~normlab.backends.policy.MAX_SHIFT_RATIO`, as it bounds ATen's
kernels. That node (ONNX ``LayerNormalization``/``InstanceNormalization``,
OpenVINO ``GroupNormalization``/``MVN``) computes in one pass, ``E[x^2] -
E[x]^2``, which without the shift is 5e-4 (onnxruntime, layer norm) to 1.3e-3
(OpenVINO, group norm) off at an offset of 1e4. Group norm of ``(1, 56, 56,
64)`` in onnxruntime, one thread: 252 against 3920 us for the general path's
graph (``docs/deploying.md``). RMS norm, with no subtraction to guard, is
recorded as ``x * rsqrt(mean(x * x) + epsilon)``.
"""

from __future__ import annotations

import math
import warnings

import torch

from normlab.backends.policy import MAX_SHIFT_RATIO, subsample_size
from normlab.backends.torch_guards import compute_dtype

#: Positions between two of a group norm shift's subsample.
_STRIDE = int(MAX_SHIFT_RATIO)


def exporting() -> bool:
    """Whether ``torch.export``, an ONNX exporter or TorchScript's tracer (with
    which Keras exports to OpenVINO) records this call; ``torch.compile``
    alone does not."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def group_norm(x, groups, axis, gamma, beta, epsilon):
    """Group (and instance) norm of channels-first or channels-last ``x`` as
    an exporter should record it: ATen's ``group_norm`` of ``x`` less a
    detached shift per (sample, group), the mean of every 16th position of
    its channels; None for a channel axis elsewhere. No size is read: the
    graph keeps the batch and spatial sizes symbolic."""
    if x.ndim < 3 or axis not in (1, x.ndim - 1):
        return None
    compute = compute_dtype(x.dtype)
    xc = _cast(x.movedim(axis, 1), compute)  # (N, C, *S)
    grouped = xc.reshape(xc.shape[0], groups, -1)
    sub = xc.detach().flatten(2)[:, :, ::_STRIDE]
    shift = sub.reshape(sub.shape[0], groups, -1).mean(dim=-1, keepdim=True)
    centered = (grouped - shift).reshape(xc.shape)
    y = torch.nn.functional.group_norm(centered, groups, _param(gamma, compute, x), _param(beta, compute, x), epsilon)
    return _cast(y.movedim(1, axis), x.dtype)


def layer_norm(x, axes, gamma, beta, epsilon):
    """Layer norm over the trailing ``axes`` of ``x`` as an exporter should
    record it (see the module's docstring), or None: other axes, or a
    reduced size the graph leaves symbolic."""
    width = _width(x, axes, pinned=gamma is not None or beta is not None)
    if width is None:
        return None
    compute = compute_dtype(x.dtype)
    rows = x.flatten(x.ndim - len(axes)) if len(axes) > 1 else x
    head = subsample_size(width)
    shift = rows.detach()[..., :head].mean(dim=-1, keepdim=True, dtype=compute)
    y = torch.nn.functional.layer_norm(
        _cast(rows, compute) - shift, (width,), _param(gamma, compute, x, width), _param(beta, compute, x, width),
        epsilon,
    )
    return _cast(y, x.dtype).reshape_as(x)


def rms_norm(x, axes, gamma, beta, epsilon):
    """RMS norm over ``axes`` of ``x`` as an exporter should record it:
    ``x * rsqrt(mean(x * x) + epsilon) * gamma + beta``. onnxruntime's
    optimizer broke the general path's graph (a cast of ``x`` recorded after
    its statistic: "Invalid model" on loading, a node's input gone)."""
    compute = compute_dtype(x.dtype)
    xf = _cast(x, compute)
    y = xf * torch.rsqrt((xf * xf).mean(dim=tuple(axes), keepdim=True) + epsilon)
    if gamma is not None:
        y = y * _along(gamma, axes, x.ndim, compute, x)
    if beta is not None:
        y = y + _along(beta, axes, x.ndim, compute, x)
    return _cast(y, x.dtype)


def _along(param, axes, ndim, dtype, x):
    """A parameter of the shape of ``x`` at (sorted) ``axes``, with a size-1
    dimension at every other axis after the first of them: it broadcasts
    against ``x`` with no size read."""
    t = _tensor(param, dtype, x)
    for i in range(axes[0], ndim):
        if i not in axes:
            t = t.unsqueeze(i - axes[0])
    return t


def _width(x, axes, *, pinned):
    """The number of values the trailing ``axes`` hold, a Python int; None
    for other axes, or where a size is symbolic. TorchScript's tracer gives
    every size as a tensor: read as an int, it is fixed in the graph, which
    only parameters of that size (``pinned``) make right."""
    k = len(axes)
    if list(axes) != list(range(x.ndim - k, x.ndim)):
        return None
    sizes = x.shape[x.ndim - k:]
    if all(type(d) is int for d in sizes):
        return math.prod(sizes)
    if not (pinned and torch.jit.is_tracing()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return math.prod(int(d) for d in sizes)


def _cast(t, dtype):
    """``t`` in ``dtype``; a tracer records no cast where it has that dtype."""
    return t if t.dtype == dtype else t.to(dtype)


def _param(param, dtype, x, width=-1):
    return None if param is None else _tensor(param, dtype, x).reshape(width)


def _tensor(param, dtype, x):
    """``param`` as a tensor of ``dtype`` on ``x``'s device. A tensor is cast
    and moved only where it must be (``torch.as_tensor`` of one is recorded
    as a constant by TorchScript's tracer, with a warning)."""
    if not isinstance(param, torch.Tensor):
        return torch.as_tensor(param, dtype=dtype, device=x.device)
    return _cast(param if param.device == x.device else param.to(x.device), dtype)
