"""Tensors the torch fast paths' autograd functions save for their backward,
given back in the layout their kernels read.

The kernels (normlab's compiled CPU kernels, Triton's, ATen's through
views) address memory: they need the strides the forward saw. A saved-tensor
hook (``torch.autograd.graph.saved_tensors_hooks``) only promises the same
values back, and may unpack them in another layout (a hook that transposes
to offload, say); read as if laid out as before, they gave gradients whole
units off. :func:`saved_tensors` copies such a tensor back into its saved strides
(nothing to copy otherwise).

An inference tensor (made under ``torch.inference_mode()``) cannot be saved:
:func:`save_tensors` saves a copy of it where a gradient is recorded, so a model fed
such data can still take the gradients of its parameters, as the general path does.
"""

from __future__ import annotations

from typing import Any

import torch


def save_tensors(ctx: Any, *tensors: torch.Tensor | None) -> None:
    """``ctx.save_for_backward(*tensors)``, remembering each tensor's strides."""
    recorded = any(ctx.needs_input_grad)  # else nothing is saved: no copy
    tensors = tuple(t.clone() if recorded and t is not None and t.is_inference() else t for t in tensors)
    ctx.save_for_backward(*tensors)
    ctx.saved_strides = tuple(None if t is None else t.stride() for t in tensors)


def saved_tensors(ctx: Any) -> tuple[Any, ...]:
    """``ctx.saved_tensors``, each in the strides :func:`save_tensors` saw."""
    out = []
    for t, stride in zip(ctx.saved_tensors, ctx.saved_strides):
        if t is not None and t.stride() != stride:
            t = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)
        out.append(t)
    return tuple(out)
