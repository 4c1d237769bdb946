"""Compiling the Triton kernels for a GPU this machine does not have.

Triton's interpreter checks what the kernels compute, not whether they
compile: it runs them in NumPy, so a construct the GPU compiler rejects,
or a block too large for the registers, passes there. Triton compiles for
any NVIDIA target without a GPU (``triton.compile`` with a ``GPUTarget``;
its wheel ships ``ptxas``), so this module compiles every kernel the torch
hooks launch for a set of shapes, as they launch it, and reports each
one's registers, spills and shared memory as ``ptxas -v`` counts them.

How the launches are found: the kernel modules' ``@triton.jit`` functions
are replaced by recorders, and the hooks' launch functions
(:func:`normlab.backends.triton.channels_last.forward` and ``backward``,
:mod:`normlab.backends.triton.row_norm`'s) run on CPU tensors: each launch
is recorded (kernel, argument types, compile-time constants, warps) and
nothing runs. The argument types follow Triton's own specialization:
``*bf16``-style pointers divisible by 16, ``i32`` integers (divisible by 16
where they are), ``fp32`` floats.

Run it as a script in a process where ``TRITON_INTERPRET`` is unset (the
kernels must be decorated as compiled functions); it prints a JSON report,
or exits with :data:`UNAVAILABLE` where Triton or its ``ptxas`` is missing::

    KERAS_BACKEND=torch python -m tests.backends._triton_aot --arch 90
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import NamedTuple
from unittest import mock

import torch

#: (kind, shape, groups): the shapes of ``benchmarks/gpu.py`` and the
#: extremes of each block strategy.
CASES = [
    ("group", (32, 56, 56, 256), 32),  # chunked, 8 channels a group
    ("group", (64, 28, 28, 128), 32),  # resident, 16 lanes
    ("group", (8, 56, 56, 256), 256),  # instance norm: chunked, one channel a group
    ("group", (4, 16, 16, 64), 8),  # resident at its largest slab (16384 elements, 16 warps)
    ("group", (2, 7, 7, 4096), 1),  # the widest group (4096 channels): chunked, one row a tile
    ("layer", (8192, 4096), None),
    ("layer", (64, 8192), None),  # 16 warps from 8192 lanes on
    ("layer", (64, 16384), None),  # the widest row
    ("layer", (4096, 96), None),  # many rows a program
    ("rms", (8192, 4096), None),
]

#: Input dtypes compiled for every case; float16 compiles for the first.
DTYPES = ("float32", "bfloat16")

#: The exit status when Triton or its ptxas is missing (nothing compiled).
UNAVAILABLE = 3

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class Launch(NamedTuple):
    """One kernel launch as Triton compiles it."""

    kernel: str
    signature: tuple[tuple[str, str], ...]  # (argument, type or "constexpr")
    constants: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]  # arguments known divisible by 16
    num_warps: int


def _arg_type(value) -> tuple[str, bool]:
    """Triton's type of a launch argument, and whether it is divisible by 16."""
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"unexpected launch argument {value!r}")


class _Recorder:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](*args, **meta)`` records."""

    def __init__(self, name, arg_names, launches):
        self.name, self.arg_names, self.launches = name, arg_names, launches

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, **constants):
            names = self.arg_names[: len(args)]
            types = dict(zip(names, (_arg_type(a) for a in args)))
            signature = tuple((n, types[n][0] if n in types else "constexpr") for n in self.arg_names)
            self.launches.append(Launch(self.name, signature, tuple(sorted(constants.items())),
                                        tuple(n for n in names if types[n][1]), num_warps))

        return launch


def kernels() -> dict[str, tuple[object, object]]:
    """The kernels the hooks launch: the public ``@triton.jit`` functions of
    the kernel modules, by name, with their module."""
    from normlab.backends.triton import group_kernels, row_kernels

    found: dict[str, tuple[object, object]] = {}
    for module in (group_kernels, row_kernels):
        for name in dir(module):
            fn = getattr(module, name)
            if type(fn).__name__ == "JITFunction" and fn.__module__ == module.__name__ and not name.startswith("_"):
                assert name not in found, f"two kernels named {name}"
                found[name] = (module, fn)
    return found


def launches(cases=CASES, dtypes=DTYPES) -> list[Launch]:
    """Every distinct launch of the hooks' forward and backward for ``cases``
    in ``dtypes``, with and without the affine parameters and the input
    gradient (each a different compiled kernel)."""
    from normlab.backends.triton import channels_last, row_norm

    recorded: list[Launch] = []
    with ExitStack() as stack:
        for name, (module, fn) in kernels().items():
            stack.enter_context(mock.patch.object(module, name, _Recorder(name, fn.arg_names, recorded)))
        for i, (kind, shape, groups) in enumerate(cases):
            for dtype in dtypes + (("float16",) if i == 0 else ()):
                x = torch.zeros(shape, dtype=getattr(torch, dtype))
                c = shape[-1]
                for affine in (True, False):
                    gamma = beta = torch.ones(shape[-1] if kind == "group" else shape[1:]) if affine else None
                    if kind == "group":
                        n, s = shape[0], x.numel() // (shape[0] * c)
                        x3 = x.view(n, s, c)
                        p = channels_last.plan(s, c, groups, x.element_size())
                        _, mean, rstd = channels_last.forward(x3, gamma, beta, groups, 1e-5, p)
                        for need_dx in (True, False):
                            channels_last.backward(x3, x3, gamma, mean, rstd, groups, p, need_dx)
                    else:
                        x2 = x.view(shape[0], -1)
                        center = kind == "layer"
                        _, mean, rstd = row_norm.forward(x2, gamma, beta, 1e-5, center)
                        for need_dx in (True, False):
                            row_norm.backward(x2, x2, gamma, mean, rstd, center, need_dx)
    return list(dict.fromkeys(recorded))


def _ptxas(arch: int) -> str:
    """The path of the ``ptxas`` Triton compiles with (its API moved between releases)."""
    from triton.backends.nvidia import compiler

    if hasattr(compiler, "get_ptxas"):
        try:
            return compiler.get_ptxas(arch).path  # Triton 3.5 and later
        except TypeError:
            return compiler.get_ptxas().path  # 3.4
    return compiler._path_to_binary("ptxas")[0]  # 3.0 to 3.3


def _legacy_source(fn, launch, names, constants):
    """The kernel's source for Triton 3.0 to 3.2 (other argument conventions)."""
    from triton.backends import compiler as backends
    from triton.compiler import ASTSource
    from triton.compiler import compiler as legacy

    divisible = {names.index(n) for n in launch.divisible}
    if hasattr(backends, "AttrsDescriptor"):  # 3.2
        signature = {n: ("constexpr" if n in constants else t) for n, t in launch.signature}
        hints = backends.AttrsDescriptor.from_hints({i: 16 for i in divisible})
        return ASTSource(fn, signature, constants, hints)
    signature = {n: t for n, t in launch.signature if n not in constants}  # 3.0, 3.1
    return ASTSource(fn, signature, constants, legacy.AttrsDescriptor(divisible_by_16=divisible))


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compiles ``launch`` for ``sm_<arch>``; its resource use per ``ptxas -v``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, fn = kernels()[launch.kernel]
    names = [n for n, _ in launch.signature]
    constants = dict(launch.constants)
    constexprs = {(names.index(n),): v for n, v in constants.items()}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in launch.divisible}
    try:
        source = ASTSource(fn, dict(launch.signature), constexprs, attrs)
        source.hash()  # 3.0 and 3.1 fail here, 3.2 above
    except (TypeError, AttributeError):
        source = _legacy_source(fn, launch, names, constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([_ptxas(arch), "-v", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}",
                              ptx, "-o", os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True,
                             check=True).stderr

    def count(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "kernel": launch.kernel,
        "types": sorted({t for _, t in launch.signature if t.startswith("*")}),
        "constants": constants,
        "num_warps": launch.num_warps,
        "registers": count(r"Used (\d+) registers"),
        "spill_stores": count(r"(\d+) bytes spill stores"),
        "spill_loads": count(r"(\d+) bytes spill loads"),
        "stack": count(r"(\d+) bytes stack frame"),
        "shared": compiled.metadata.shared,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="kernels compiled at once (1 for Triton 3.2 and earlier on Python 3.11, whose "
                             "ast.parse is not thread-safe there)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the kernels would be decorated for the interpreter")
    try:
        import triton

        ptxas = _ptxas(args.arch)
    except Exception as error:  # noqa: BLE001 - any reason means: nothing to compile with here
        print(f"triton's NVIDIA compiler is not available: {error}", file=sys.stderr)
        return UNAVAILABLE
    if not os.path.exists(ptxas):
        print(f"ptxas not found at {ptxas}", file=sys.stderr)
        return UNAVAILABLE
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # compiling releases the GIL
        results = list(pool.map(lambda launch: compile_launch(launch, args.arch), launches()))
    report = {"arch": args.arch, "triton": triton.__version__, "kernels": sorted(kernels()), "launches": results}
    json.dump(report, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
