"""normlab's compiled CPU kernels (``slices.c``, ``rows.c``, ``affine.c``,
``common.h``): group, instance, layer, RMS and batch norm of float32, bfloat16
and float16 data (statistics and arithmetic in float32), forward and
backward, batch norm with given statistics (inference) included, with
the fast paths' shift folded into their reads, so that they are exact at
any offset without the centered copy ATen's kernels need
(:mod:`normlab.backends.torch`).

The C source ships with the package and is compiled on first use by the
system's C compiler (``$CC``, which may carry a launcher or flags such as
``ccache gcc``; else ``cc``), once per element type
(:data:`DTYPES`), for the CPU it runs on (``-march=native``), into a cache
folder: ``$NORMLAB_CACHE_DIR``, else
``$XDG_CACHE_HOME/normlab/kernels``, else ``~/.cache/normlab/kernels``
(one file per source, compiler, flags and CPU; a second process finds it
there), or, where that folder cannot be written, ``normlab-<uid>`` in the
temporary folder, used only while it is this user's alone (owner, no write
permission for others: a shared folder could hold a library planted by
someone else). It takes about a second; a library in the cache that is
not whole (an ELF file shorter than its headers say, left by a crash of the
disk or a copy: loading it would kill the process with SIGBUS) is built
again. The library is plain C with
OpenMP (sharing PyTorch's runtime and threads, see :data:`FLAGS`), loaded
with :mod:`ctypes`, which releases the GIL during a call.

Where there is no compiler, or the build fails, :func:`library` returns
None (the reason is logged once, on the ``normlab`` logger) and the torch
fast paths use ATen's kernels on centered data instead: same results to
float rounding, slower. ``NORMLAB_CPU_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from normlab.backends import switch

__all__ = ["DTYPES", "SOURCES", "available", "build", "cache_dir", "entry", "library"]

_HERE = Path(__file__).parent

#: The C sources of the kernels (compiled together into one library), and the header they share.
SOURCES = (_HERE / "slices.c", _HERE / "rows.c", _HERE / "affine.c")
HEADER = _HERE / "common.h"

#: Compiler flags. No ``-ffast-math``: the kernels' exactness rests on the
#: order of ``(x - shift) - mean``, which it would let the compiler change
#: (only the loops marked ``omp simd`` may sum in vector lanes).
#: ``-fopenmp`` links ``libgomp.so.1``, which resolves to the copy PyTorch
#: has loaded already: its waiting worker threads run the kernels' tasks
#: (new threads would compete with them for the cores: measured 2x slower
#: on 2 cores after any parallel ATen op).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-fno-math-errno")

#: Element types the sources are compiled for: suffix of the entry points
#: (``nl_rows_forward_bf16``) -> ``NL_DTYPE`` (see ``common.h``).
DTYPES = {"f32": 0, "bf16": 1, "f16": 2}

_log = logging.getLogger("normlab")
_lock = threading.Lock()
_state: dict[str, object] = {}

_I64, _F64, _PTR = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
_SIGNATURES = {
    # x, shift, gamma, beta, y, mean, var, rstd, n, s, c, g, chunks, eps, part, scratch, coef, threads
    "nl_slices_forward": [_PTR] * 8 + [_I64] * 5 + [_F64] + [_PTR] * 3 + [_I64],
    # dy, x, shift, mean, rstd, gamma, dx, dgamma, dbeta, n, s, c, g, chunks, part, scratch, coef, acc, threads
    "nl_slices_backward": [_PTR] * 9 + [_I64] * 5 + [_PTR] * 4 + [_I64],
    # x, shift, gamma, beta, y, mean, var, rstd, r, w, g, p, centered, head, chunks, eps, threads
    "nl_rows_forward": [_PTR] * 8 + [_I64] * 7 + [_F64, _I64],
    # dy, x, shift, mean, rstd, gamma, dx, dgamma, dbeta, r, w, g, p, centered, chunks, part, scratch, threads
    "nl_rows_backward": [_PTR] * 9 + [_I64] * 6 + [_PTR] * 2 + [_I64],
    # x, shift, gamma, beta, y, mean, var, rstd, n, c, s, chunks, eps, threads
    "nl_planes_forward": [_PTR] * 8 + [_I64] * 4 + [_F64, _I64],
    # dy, x, shift, mean, rstd, gamma, dx, dgamma, dbeta, n, c, s, chunks, threads
    "nl_planes_backward": [_PTR] * 9 + [_I64] * 5,
    # x, mean, var, gamma, beta, y, o, c, i, tasks, eps, coef, threads
    "nl_affine_forward": [_PTR] * 6 + [_I64] * 4 + [_F64, _PTR, _I64],
    # dy, x, mean, var, gamma, dx, dgamma, dbeta, o, c, i, tasks, eps, coef, part, scratch, threads
    "nl_affine_backward": [_PTR] * 8 + [_I64] * 4 + [_F64] + [_PTR] * 3 + [_I64],
}


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("NORMLAB_CACHE_DIR"):
        return Path(os.environ["NORMLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normlab" / "kernels"


def _compiler() -> list[str] | None:
    """The compiler command (``CC`` may carry a launcher or flags: ``ccache gcc``)."""
    try:
        words = shlex.split(os.environ.get("CC") or "cc")
    except ValueError as error:  # (an unbalanced quote)
        raise RuntimeError(f"CC={os.environ.get('CC')!r} is not a command line ({error}); set CC") from None
    path = shutil.which(words[0]) if words else None
    return None if path is None else [path, *words[1:]]


def _private(folder: Path) -> bool:
    """Whether ``folder`` belongs to this user alone (no one else may plant a library there)."""
    if not hasattr(os, "getuid"):
        return True
    info = folder.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and features (x86's
    ``model name``/``flags``, ARM's ``CPU implementer``/``CPU part``/``Features``)."""
    keys = ("model name", "flags", "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = list(dict.fromkeys(line for line in f if line.startswith(keys)))
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def _target(cc: list[str]) -> Path:
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    texts = [p.read_text() for p in (*SOURCES, HEADER)]
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (*texts, " ".join(cc), version, " ".join(FLAGS), repr(DTYPES),
                                         _cpu_signature()))
    ).hexdigest()[:16]
    return cache_dir() / f"norm-{key}.so"


def build() -> Path:
    """Compiles the kernels (unless already in the cache) and returns the
    library's path. Raises ``RuntimeError`` with the compiler's message."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found (looked for {os.environ.get('CC') or 'cc'!r}; set CC)")
    target = _target(cc)
    if _whole(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError:  # a read-only cache folder: a private one in the temporary folder
        user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
        target = Path(tempfile.gettempdir()) / f"normlab-{user}" / target.name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        if not _private(target.parent):  # in a shared folder anyone could have made it first
            raise RuntimeError(f"{target.parent} is not private to this user (owner or permissions); "
                               "set NORMLAB_CACHE_DIR to a folder of your own")
        if _whole(target):
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as objects:
            _compile(cc, objects, tmp)
        with open(tmp, "rb") as f:  # on the disk before it is named: a crash leaves no partial library
            os.fsync(f.fileno())
        os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _whole(path: Path) -> bool:
    """Whether ``path`` holds a whole library: on Linux an ELF file at least as long as
    its program and section header tables reach (they end it); elsewhere, any file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if not sys.platform.startswith("linux"):
        return size > 0
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return False
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit
        if len(head) < 64:
            return False
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "4H", head, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "4H", head, 42)
    return size >= max(len(head), phoff + phentsize * phnum, shoff + shentsize * shnum)


def _compile(cc: list[str], objects: str, out: str) -> None:
    """Compiles each source once per element type (concurrently) into
    ``objects``, then links them into ``out``."""
    units = [(src, suffix, os.path.join(objects, f"{src.stem}_{suffix}.o"))
             for src in SOURCES for suffix in DTYPES]
    jobs = [subprocess.Popen([*cc, *FLAGS, f"-DNL_DTYPE={DTYPES[suffix]}", "-c", str(src), "-o", obj],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for src, suffix, obj in units]
    errors = []
    for job in jobs:
        _, err = job.communicate(timeout=300)
        if job.returncode != 0:
            errors.append(err.strip())
    if not errors:
        done = subprocess.run([*cc, *FLAGS, "-shared", "-o", out, *(obj for *_, obj in units), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            errors.append(done.stderr.strip())
    if errors:
        raise RuntimeError(f"{' '.join(cc)} failed to compile normlab's CPU kernels:\n" + "\n".join(errors))


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(build()))
        for name, argtypes in _SIGNATURES.items():
            for suffix in DTYPES:
                fn = getattr(lib, f"{name}_{suffix}")  # AttributeError: a library without the symbol
                fn.argtypes, fn.restype = argtypes, None
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
        _log.warning("normlab: CPU kernels unavailable, using ATen's on centered data (%s)", error)
        return None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None where unavailable
    (turned off, no compiler, or the build failed: see the module docstring)."""
    if not switch("NORMLAB_CPU_KERNELS"):
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether :func:`library` has the kernels (building them if needed)."""
    return library() is not None


def entry(name: str, suffix: str):
    """The entry point ``name`` (``"nl_rows_forward"``, ...) for the element
    type ``suffix`` (a key of :data:`DTYPES`), or None where the kernels are
    unavailable."""
    lib = library()
    return None if lib is None else getattr(lib, f"{name}_{suffix}")
