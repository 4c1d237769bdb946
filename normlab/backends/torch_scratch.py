"""The torch fast paths' scratch memory: centered copies of large inputs
written into a buffer kept per thread (see :data:`SCRATCH_BYTES`)."""

from __future__ import annotations

import threading

import torch

#: Centered copies live in a buffer kept per thread (:func:`subtract`) from
#: this size up to the second (bytes): above about 1 MiB a fresh allocation
#: comes from glibc's mmap or from a heap top it trims again on free, and is
#: page-faulted in on every call (26 ms per 100 MB here; measured on
#: (8, 56, 56, 256) float32 batch norm, 25.7 MB: 30 ms per forward with a
#: fresh centered copy, 7.7 ms with the buffer, ATen alone 4.4 ms). No
#: centered copy outlives the call that made it
#: (:class:`~normlab.backends.torch_autograd.ShiftedNorm`).
SCRATCH_BYTES = (1 << 20, 512 << 20)

_scratch = threading.local()


def subtract(x, shift, *, transient=False):
    """``x - shift`` (broadcast) in the compute dtype: one pass, also the
    upcast of float16/bfloat16. ``transient``: the result is read only
    before the next call in this thread, and a CPU result is written into
    the thread's buffer (see :data:`SCRATCH_BYTES`)."""
    dtype = torch.promote_types(x.dtype, shift.dtype)
    low, high = SCRATCH_BYTES
    if not transient or x.device.type != "cpu" or not low <= x.numel() * dtype.itemsize <= high:
        return torch.sub(x, shift)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < x.numel():
        with torch.inference_mode(False):  # made in inference mode, it could not be written outside it
            buffer = buffers[dtype] = torch.empty(x.numel(), dtype=dtype, device=x.device)
    return torch.sub(x, shift, out=buffer[: x.numel()].view(x.shape))


def release_buffers():
    """Frees this thread's centering buffers (see :data:`SCRATCH_BYTES`):
    each keeps the largest centered copy made so far, up to its bound, until
    this is called or the thread ends. The next large call allocates anew."""
    _scratch.__dict__.pop("buffers", None)
