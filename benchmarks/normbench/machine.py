"""The machine a result was measured on: CPU, threads, load, library versions.

Nothing here imports a framework: versions come from the installed
packages' metadata, the CPU from ``/proc/cpuinfo``. The worker adds the
thread counts each backend actually uses (``runners.*.threads``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

LIBRARIES = ("keras", "torch", "jax", "jaxlib", "tensorflow", "tensorflow-cpu", "numpy", "scipy", "normlab")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS", "XLA_FLAGS", "NORMLAB_FAST_PATHS", "KERAS_BACKEND")
#: Instruction-set flags worth recording (the rest of /proc/cpuinfo's flags are not kept).
ISA_PREFIXES = ("avx", "fma", "amx", "sse4", "f16c", "sve", "asimd", "neon")
#: What has to agree for two results to be one machine.
FINGERPRINT = ("vendor", "model", "family", "model_id", "stepping", "logical_cpus", "isa")


def parse_cpuinfo(text):
    """The CPU from ``/proc/cpuinfo`` text: model, vendor, family/model/stepping,
    logical CPU count, cache, the instruction-set flags of :data:`ISA_PREFIXES`
    and whether it has AVX-512 (x86 ``flags``, or ARM ``Features``)."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    fields = {}
    for line in (blocks[0] if blocks else "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    processors = sum(1 for line in text.splitlines() if line.split(":")[0].strip() == "processor")
    flags = (fields.get("flags") or fields.get("features") or "").split()
    isa = sorted(f for f in set(flags) if f.startswith(ISA_PREFIXES))
    avx512 = sorted(f for f in isa if f.startswith("avx512"))
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or fields.get("cpu part")
    return {
        "model": model or platform.processor() or "unknown",
        "vendor": fields.get("vendor_id") or fields.get("cpu implementer"),
        "family": fields.get("cpu family"),
        "model_id": fields.get("model") if fields.get("model", "").isdigit() else fields.get("cpu part"),
        "stepping": fields.get("stepping") or fields.get("cpu revision"),
        "logical_cpus": processors or None,
        "cache": fields.get("cache size"),
        "hypervisor": "hypervisor" in flags,
        "avx512": bool(avx512),
        "avx512_flags": avx512,
        "avx2": "avx2" in flags,
        "isa": isa,
    }


def cpu_info(path="/proc/cpuinfo"):
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return {"model": platform.processor() or platform.machine(), "vendor": None, "family": None,
                "model_id": None, "stepping": None, "logical_cpus": os.cpu_count(), "cache": None,
                "hypervisor": None, "avx512": None, "avx512_flags": [], "avx2": None, "isa": []}


def parse_loadavg(text):
    """``/proc/loadavg``: the 1/5/15-minute load averages and running/total tasks."""
    parts = text.split()
    running, _, total = parts[3].partition("/")
    return {"1m": float(parts[0]), "5m": float(parts[1]), "15m": float(parts[2]),
            "running": int(running), "tasks": int(total)}


def parse_pressure(text):
    """``/proc/pressure/cpu``: the share of time some task waited for a CPU (avg10/avg60, percent)."""
    for line in text.splitlines():
        if line.startswith("some"):
            values = dict(item.split("=") for item in line.split()[1:])
            return {"avg10": float(values["avg10"]), "avg60": float(values["avg60"])}
    return None


def load():
    """The machine's load right now (load averages, runnable tasks, CPU pressure where the kernel has it)."""
    out = {}
    try:
        with open("/proc/loadavg") as f:
            out.update(parse_loadavg(f.read()))
    except (OSError, ValueError, IndexError):
        if hasattr(os, "getloadavg"):
            out.update(zip(("1m", "5m", "15m"), os.getloadavg()))
    try:
        with open("/proc/pressure/cpu") as f:
            out["cpu_pressure"] = parse_pressure(f.read())
    except (OSError, ValueError, KeyError):
        pass
    return out


def versions():
    """Installed versions of :data:`LIBRARIES` (from package metadata: nothing is imported)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state(root):
    """The checkout's commit and whether it has uncommitted changes (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit or None, "dirty": bool(dirty)}


def machine_info(root=None):
    """Everything the driver knows about the machine before the workers start."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_info(),
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "git": git_state(root) if root else None,
    }


def fingerprint(machine):
    """The CPU fields of :data:`FINGERPRINT` of a result's ``machine`` (None: not recorded)."""
    cpu = (machine or {}).get("cpu")
    if not cpu:
        return None
    return {key: cpu.get(key) for key in FINGERPRINT}


def differences(base, current):
    """What differs between two results' machines: ``(cpu, other)``, lists of lines.

    ``cpu`` is non-empty where the two are not one CPU (or one of them did
    not record it); ``other`` lists library versions, usable CPUs and thread
    settings that differ, which make a comparison suspect but not void.
    """
    a, b = fingerprint(base), fingerprint(current)
    if a is None or b is None:
        cpu = ["CPU not recorded in " + ("BASE" if a is None else "the current result")]
    else:
        cpu = [f"cpu {key}: {a[key]} vs {b[key]}" for key in FINGERPRINT if a[key] != b[key]]
    other = []
    for key in ("cpus_usable", "thread_env", "python"):
        if (base or {}).get(key) != (current or {}).get(key):
            other.append(f"{key}: {(base or {}).get(key)} vs {(current or {}).get(key)}")
    va, vb = (base or {}).get("versions", {}), (current or {}).get("versions", {})
    for name in sorted(set(va) | set(vb)):
        if va.get(name) != vb.get(name):
            other.append(f"{name}: {va.get(name)} vs {vb.get(name)}")
    return cpu, other


def load_text(entry):
    if not entry:
        return "n/a"
    text = f"{entry.get('1m', float('nan')):.2f} {entry.get('5m', float('nan')):.2f} {entry.get('15m', float('nan')):.2f}"
    if "running" in entry:
        text += f", {entry['running']} running"
    pressure = entry.get("cpu_pressure")
    if pressure:
        text += f", CPU pressure {pressure['avg10']:.0f}%"
    return text


def header_lines(machine, load_before=None, load_after=None):
    """The printed header: CPU and its vector flags, threads, load, versions."""
    cpu = machine.get("cpu") or {}
    simd = "AVX-512 (" + " ".join(f.removeprefix("avx512") or "f" for f in cpu.get("avx512_flags", [])) + ")" \
        if cpu.get("avx512") else ("AVX2, no AVX-512" if cpu.get("avx2") else "no AVX2/AVX-512")
    ident = "/".join(str(cpu.get(k)) for k in ("family", "model_id", "stepping"))
    lines = [
        f"cpu      {cpu.get('model')} ({cpu.get('vendor')}, family/model/stepping {ident}"
        + (", virtual machine" if cpu.get("hypervisor") else "") + f"), {simd}",
        f"threads  {machine.get('cpus')} logical CPUs, {machine.get('cpus_usable')} usable"
        + "".join(f", {k}={v}" for k, v in machine.get("thread_env", {}).items()),
        "versions " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()),
    ]
    git = machine.get("git")
    if git:
        lines.append(f"checkout {git.get('commit')}" + (" + uncommitted changes" if git.get("dirty") else ""))
    if load_before is not None or load_after is not None:
        lines.append(f"load     before {load_text(load_before)}"
                     + (f"; after {load_text(load_after)}" if load_after is not None else ""))
    return lines
