"""What the kernel modules share: the decorator, and a sum made of Triton's
core builtins only.

The kernels call ``triton.language`` builtins (plain functions: ``tl.load``,
``tl.full``, ``tl.reduce``, ...) and functions decorated with :data:`jit`,
never the functions Triton's standard library decorates itself (``tl.sum``,
``tl.zeros``, ``tl.zeros_like``, ``tl.cdiv`` are ``JITFunction`` objects).
Triton decides interpreted or compiled when a function is decorated, by
``TRITON_INTERPRET`` at that moment: its standard library when ``triton``
is first imported (``import keras`` on torch already imports it, through
``torch._dynamo``), this package's kernels when this package is imported.
Keeping to builtins lets a test run the kernels in the interpreter by
setting the variable before importing this package, whatever imported
``triton`` before.
"""

from __future__ import annotations

from normlab.backends.triton.runtime import triton

if triton is not None:
    import triton.language as tl

#: ``triton.jit``; without Triton (see :func:`runtime.load_triton`) the
#: identity: the kernels stay plain functions and are never launched.
jit = triton.jit if triton is not None else (lambda fn: fn)


@jit
def _add(a, b):
    return a + b


@jit
def total(x, axis: tl.constexpr):
    """``tl.sum(x, axis)`` for float32 ``x``."""
    return tl.reduce(x, axis, _add)
