"""When the torch fast paths must stand aside: a tracer, a transform or a
dispatch mode is running, or a tensor is not a plain one (see
:mod:`normlab.backends.torch`)."""

from __future__ import annotations

import keras
import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from normlab._compat import torch_device


def traced() -> bool:
    """Whether a compiler, an exporter or a function transform is tracing this
    call, or forward-mode AD is on (the hooks decline).

    ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jvp``; per-sample
    gradients) cannot enter the fast paths' ``autograd.Function`` classes, whose
    kernels run outside the dispatcher, and forward-mode AD (``jvp``,
    ``torch.autograd.forward_ad``) needs a ``jvp`` they do not have: the
    general path's plain ops support both.
    """
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or torch.autograd.forward_ad._current_level >= 0
        or any(torch._C._get_dispatch_mode(key) is not None for key in _TRACING_MODES)
    )


#: Dispatch modes that trace or fake the tensors (``make_fx``, ``FakeTensorMode``,
#: functionalization): the kernels would read memory that is not there, or run
#: outside the graph being recorded.
_TRACING_MODES = (torch._C._TorchDispatchModeKey.PROXY, torch._C._TorchDispatchModeKey.FAKE,
                  torch._C._TorchDispatchModeKey.FUNCTIONAL)
#: The tensor types the kernels take: a subclass (a wrapper such as DTensor, a
#: fake tensor) has no memory of its own behind ``data_ptr()``.
PLAIN = (torch.Tensor, torch.nn.Parameter)


def on_device(t, device) -> bool:
    """Whether ``t`` (a tensor or a Keras variable holding one) is on
    ``device``; anything else (a number, a list, an array, None) is made
    there by the hooks."""
    value = t if isinstance(t, torch.Tensor) else getattr(t, "value", None)
    return not isinstance(value, torch.Tensor) or value.device == device


def at_keras_device(x) -> bool:
    """Whether ``x`` is a plain tensor already on the device Keras puts
    tensors on (``keras.device`` scope, else its default). Keras'
    ``convert_to_tensor`` returns such a tensor unchanged, but compares its
    ``torch.device`` with a string, never equal, and calls ``x.to(device)``:
    a no-op that tracers record, a ``Cast`` in every exported ONNX graph."""
    if type(x) not in PLAIN:
        return False
    name = torch_device()
    if name == "cpu":
        return x.device.type == "cpu"
    target = torch.device(name)
    if target.index is None and target.type == "cuda":
        target = torch.device("cuda", torch.cuda.current_device())
    return x.device == target


def plain(t) -> bool:
    """Whether ``t`` is not a tensor subclass: a plain tensor, a Keras variable
    holding one, or anything the hooks convert to a new plain tensor (a
    number, a list, an array) or None."""
    value = t if isinstance(t, torch.Tensor) else getattr(t, "value", None)
    return not isinstance(value, torch.Tensor) or type(value) in PLAIN


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the hooks compute in for inputs of ``dtype``: float32 at least."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def values(*params):
    """Keras variables as the tensors they hold, each read once (a read of
    ``.value`` costs microseconds; the hooks look at a parameter several times)."""
    return tuple(p.value if isinstance(p, keras.Variable) else p for p in params)


def usable(x, *params) -> bool:
    """Whether the hooks serve ``x`` and its ``params`` (plain tensors, Keras
    variables or None, on ``x``'s device: the kernels would read another
    device's memory); asked first whether a tracer is running, so that a
    traced call reads no (symbolic) size or stride."""
    return (
        not traced()
        and type(x) in PLAIN
        and all(plain(t) and on_device(t, x.device) for t in params)
        and x.dtype in _FLOATS
        and x.ndim >= 2
        and x.numel() > 0
        and x.is_contiguous()
    )


def saved_for_backward(fn, *args):
    """``fn(*args)``; while ``torch.compile`` traces, as a checkpointed region
    whose ops are all ``MUST_SAVE``: the partitioner then saves its results
    for the backward and never recomputes them from inputs the call mutates
    afterwards (:func:`normlab.backends.saved_for_backward`). Exporters
    (``torch.export``, ONNX) partition nothing and trace ``fn`` as it is."""
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_must_save_context)


def _must_save(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE


def _must_save_context():
    # A module-level function: Dynamo traces checkpoint's context_fn only when it is not a closure.
    return create_selective_checkpoint_contexts(_must_save)
