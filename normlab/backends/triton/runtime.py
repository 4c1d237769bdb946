"""When the Triton kernels run, and the launch settings they share.

The kernels serve CUDA tensors. CPU tensors are served only inside
:func:`interpret_on_cpu` and only where the kernels were decorated under
``TRITON_INTERPRET=1`` (Triton's interpreter, which runs a kernel's
programs one after another in NumPy): that is how the tests check them on
a machine without a GPU. Everything decided here is known before any data
is read (device, dtype, shape, layout); nothing reads a tensor's value.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading

import torch

from normlab.backends import thread_setting
from normlab.backends.torch_guards import PLAIN, traced

#: Input dtypes the kernels take; statistics are float32 for all of them.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Offsets inside a kernel are 32-bit integers.
MAX_ELEMENTS = 2**31 - 1

_state = threading.local()


def load_triton():
    """The ``triton`` module, or None: not installed, or TensorFlow already
    imported in this process (TensorFlow and Triton each carry LLVM, and
    importing triton after tensorflow aborts the process: "Option
    'bitcode-mdindex-threshold' registered more than once"; the other
    order works). Decided once, when the kernel modules are imported."""
    if "tensorflow" in sys.modules:
        return None
    try:
        return importlib.import_module("triton")
    except ModuleNotFoundError:
        return None


triton = load_triton()


def available() -> bool:
    """Whether the kernels can run in this process (Triton was loaded)."""
    return triton is not None


def interpret_on_cpu() -> contextlib.AbstractContextManager[None]:
    """Context manager: let the hooks serve CPU tensors, for tests. They do
    so only if the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``
    when the kernel modules were imported); compiled kernels need CUDA."""
    return thread_setting(_state, "cpu", True, False)


def cpu_allowed() -> bool:
    """Whether this thread is inside :func:`interpret_on_cpu`."""
    return getattr(_state, "cpu", False)


def interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated for Triton's interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def serves(x, kernel) -> bool:
    """Whether the kernels take ``x``: a non-empty contiguous CUDA tensor of
    a supported dtype (or a CPU tensor inside :func:`interpret_on_cpu`
    with interpreted kernels), with Triton importable; never under a tracer,
    a function transform or forward-mode AD (:func:`~normlab.backends.torch_guards.traced`)."""
    if triton is None or traced() or type(x) not in PLAIN:
        return False
    if x.dtype not in DTYPES or x.ndim < 2 or not 0 < x.numel() <= MAX_ELEMENTS or not x.is_contiguous():
        return False
    if x.is_cuda:
        return True
    return x.device.type == "cpu" and cpu_allowed() and interpreted(kernel)


def param(value, x, shape):
    """``value`` (gamma or beta) as a contiguous 1-D torch tensor on ``x``'s
    device, or ``False`` where the kernels cannot take it (then the hook
    declines); None stays None."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        from keras import ops  # a Keras variable: its torch tensor, with its gradient

        value = ops.convert_to_tensor(value)
    if (type(value) not in PLAIN or value.device != x.device
            or value.dtype not in DTYPES + (torch.float64,) or tuple(value.shape) != shape):
        return False
    # contiguous(): a number given as gamma arrives broadcast, with stride 0.
    return value.contiguous().reshape(-1)


def on_input_device(launcher):
    """Runs ``launcher`` (whose first argument is a tensor) with that tensor's
    CUDA device current: Triton launches on the current device and its
    stream, not on the tensor's (a tensor on ``cuda:1`` while ``cuda:0`` is
    current would be read through the wrong context)."""
    @functools.wraps(launcher)
    def run(first, *args, **kwargs):
        with torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext():
            return launcher(first, *args, **kwargs)

    return run


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def num_warps(elements: int) -> int:
    """Warps for a program holding ``elements`` float32 values in registers
    (Liger's and the Triton tutorial's rule: about 8-16 values per thread).
    From 8192 on, 16 warps: compiled for sm_90 at 8 warps, the row backward
    of 8192 lanes held 207-225 registers a thread, near the 255 limit, and
    one program filled a multiprocessor's registers; at 16 warps it holds
    106-123 (``tests/backends/_triton_aot.py``)."""
    return 16 if elements >= 8192 else 8 if elements >= 4096 else 4 if elements >= 1024 else 2


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(x, work_items: int) -> int:
    """How many programs a persistent kernel launches on ``x``'s device:
    a few per multiprocessor (CUDA), a few in the interpreter; never more
    than there are work items. A property of the device, not of the data."""
    if x.is_cuda:
        return max(1, min(work_items, 4 * _multiprocessors(x.device.index or 0)))
    return max(1, min(work_items, 4))
