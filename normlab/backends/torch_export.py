"""What the torch hooks hand an exporter (``torch.export``, the ONNX
exporters, TorchScript tracing for them): a graph of standard operators that
deployment runtimes have fused kernels for, exact as the eager hooks are.

Elsewhere under a tracer (``torch.compile``, ``torch.func`` transforms) the
hooks decline and the general path's plain ops are traced; an exporter gets
the same, except where a runtime's own operator for the whole norm is
faster than that graph of elementwise passes and can be made exact:

* Layer norm over trailing axes: ATen's ``layer_norm`` of ``x`` less a
  detached shift per row (the mean of its first 16th, as the eager hooks'
  shift: :func:`normlab.backends.policy.subsample_size`; the norm is
  unchanged by a shift, and nothing flows through it). ONNX has one node for
  it, ``LayerNormalization``, which onnxruntime computes in one pass
  (``E[x^2] - E[x]^2``): the shift bounds that pass's cancellation by the
  policy's ratio (:data:`~normlab.backends.policy.MAX_SHIFT_RATIO`), as it
  bounds ATen's kernels. onnxruntime, one thread, ``(1, 128, 768)``: 79 us
  against 146 us for the general path's graph (``docs/deploying.md``).
"""

from __future__ import annotations

import math
import warnings

import torch

from normlab.backends.policy import subsample_size


def exporting() -> bool:
    """Whether ``torch.export`` or an ONNX exporter is tracing this call
    (``torch.compile`` alone is not exporting)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def layer_norm(x, axes, gamma, beta, epsilon):
    """Layer norm over the trailing ``axes`` of ``x`` as an exporter should
    record it (see the module's docstring), or None: other axes, or a
    reduced size the graph leaves symbolic."""
    width = _width(x, axes, pinned=gamma is not None or beta is not None)
    if width is None:
        return None
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.flatten(x.ndim - len(axes)) if len(axes) > 1 else x
    head = subsample_size(width)
    shift = rows.detach()[..., :head].mean(dim=-1, keepdim=True, dtype=compute)
    y = torch.nn.functional.layer_norm(
        rows.to(compute) - shift, (width,), _flat(gamma, width, compute, x.device),
        _flat(beta, width, compute, x.device), epsilon,
    )
    return (y if y.dtype == x.dtype else y.to(x.dtype)).reshape_as(x)


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


def _flat(param, width, dtype, device):
    return None if param is None else torch.as_tensor(param, dtype=dtype, device=device).reshape(width)
