"""Helpers for the Triton kernel tests: which mode the kernels run in
(Triton's interpreter on CPU tensors, or compiled on CUDA), inputs with
offsets and outliers, and float64 closed forms for RMS norm's gradients.

Triton decides interpreted or compiled when a function is decorated,
reading ``TRITON_INTERPRET`` then: the variable has to be set before
:mod:`normlab.backends.triton` is first imported in the process (test_triton.py
sets it at its top on a machine without CUDA; the kernels use no function
of Triton's standard library, which ``import keras`` on torch has already
decorated, see :mod:`normlab.backends.triton.primitives`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

#: Relative error allowed against the float64 closed forms (as tests/backends/test_fast_paths.py:
#: one spacing of [1, 2) for half precision, rounded once from float32).
TOLERANCE = {"float32": 2e-5, "float16": 1e-3, "bfloat16": 8e-3}


def mode(cuda: bool) -> tuple[str | None, str]:
    """``("interpreter" | "compiled" | None, why not)``: how the kernels run
    in this process (interpreted kernels take CPU tensors, compiled ones CUDA)."""
    from normlab.backends.triton import group_kernels, runtime

    if not runtime.available():
        if "tensorflow" in sys.modules:
            return None, "tensorflow is loaded in this process: importing triton after it aborts (runtime.load_triton)"
        return None, "triton is not installed (pip install triton, or normlab[gpu])"
    if runtime.interpreted(group_kernels.forward_resident):
        return "interpreter", ""
    if cuda:
        return "compiled", ""
    return None, ("normlab.backends.triton was imported before TRITON_INTERPRET=1 was set: run "
                  "TRITON_INTERPRET=1 python -m pytest tests/backends/test_triton.py")


def prepare() -> tuple[bool, str | None, str, str]:
    """``(cuda, mode, why not, device)`` for a test module of the kernels,
    called before it imports :mod:`normlab.backends.triton`: on a machine
    without CUDA it first sets ``TRITON_INTERPRET=1`` (the interpreter runs
    the kernels on CPU tensors), then reads the :func:`mode`."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    how, why = mode(cuda)
    return cuda, how, why, "cuda" if how == "compiled" else "cpu"


def inputs(shape, dtype, *, offset=0.0, spread=1.0, outlier_at=None, seed=0):
    """``offset + spread * normal`` as a torch tensor of ``dtype`` (and a
    cotangent); ``outlier_at``: an index whose elements are set to ``offset
    + 1000 * spread`` (the kernels shift each slice by its first element:
    an outlier there is the worst shift)."""
    import torch

    rng = np.random.default_rng(seed)
    x = offset + spread * rng.standard_normal(shape)
    if outlier_at is not None:
        x[outlier_at] = offset + 1000.0 * spread
    dy = rng.standard_normal(shape)
    return torch.from_numpy(x).to(dtype), torch.from_numpy(dy).to(dtype)


def params(shape, device="cpu", seed=1):
    """``gamma`` and ``beta`` of ``shape``, float32 on ``device``, recording gradients."""
    import torch

    rng = np.random.default_rng(seed)
    gamma = torch.from_numpy(1.0 + 0.5 * rng.standard_normal(shape)).float().to(device).requires_grad_(True)
    beta = torch.from_numpy(0.5 * rng.standard_normal(shape)).float().to(device).requires_grad_(True)
    return gamma, beta


def relative_error(got, want) -> float:
    """``max |got - want| / max |want|`` in float64."""
    got = got.detach().double().cpu().numpy() if hasattr(got, "detach") else np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
