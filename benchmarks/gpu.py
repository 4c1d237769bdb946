"""GPU benchmark of the Triton kernels: normlab against Keras' layers and the
best native op, on one CUDA GPU, in under 4 minutes.

    python benchmarks/gpu.py                        # writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --keras-wheel WHEELS   # no Keras installed: import it from these wheels
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.json   # CPU: checks the script, measures nothing

Cases (the issue's): GroupNorm(32) at (32, 56, 56, 256) and (64, 28, 28, 128),
InstanceNorm at (8, 56, 56, 256) (channels-last), LayerNorm and RMSNorm at
(8192, 4096); float32 and bfloat16; forward and forward+backward.

PyTorch, per case: ``normlab-triton`` (the kernels through their hook, on
channels-last data), ``normlab-layer`` (normlab's Keras layer on the torch
backend: whatever the torch fast path runs), ``keras-layer`` (Keras'
own layer), and the native ops: ``F.group_norm`` on a channels-last view
(``F.group_norm[NHWC]``) and on contiguous NCHW input (``[NCHW]``),
``F.instance_norm[NCHW]``, ``F.layer_norm``, ``F.rms_norm``. Parameters
are float32 for normlab and the layers (Keras' ``mixed_bfloat16``), in the
input's dtype for the native ops. Times: CUDA events around a batch of calls
(at least 1 ms), after warm-up (which compiles the Triton kernels), median of
:data:`REPEATS` batches; gradients by ``torch.autograd.grad`` (nothing
accumulates). Bandwidth counts the bytes a fused kernel must move: read
``x`` and write ``y`` forward; also read ``x`` and ``dy`` and write ``dx``
backward (5 tensors for forward+backward); ``copy`` is the fraction of a
device-to-device copy's bandwidth (read + write) measured in the same run.

JAX (in a subprocess, ``KERAS_BACKEND=jax``): normlab's layer against Keras'
layer under ``jax.jit``, forward and forward+backward (``jax.vjp``), wall
clock around ``block_until_ready`` (JAX has no event API).

Keras: imported where it is installed. normlab's package imports Keras, the
kernels do not: without Keras the kernels are loaded on their own and the
Keras and normlab-layer columns (and the whole JAX part) read "keras not
installed". ``--keras-wheel`` names wheel files or a directory of wheels
put on ``sys.path`` first: Keras' wheel and those of its pure-Python
dependencies the machine lacks (``pip download keras --no-deps`` and
absl-py, rich, markdown-it-py, mdurl, pygments, namex, packaging on a
connected machine); its compiled dependencies (h5py, optree, ml-dtypes)
must be installed.

On a machine without CUDA it exits with a message (``--smoke`` instead runs
tiny shapes on the CPU through Triton's interpreter, to check the script:
its times mean nothing and it writes only to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "gpu.json"

# (name, kind, shape, groups)
CASES = [
    ("GN(32)", "group", (32, 56, 56, 256), 32),
    ("GN(32)", "group", (64, 28, 28, 128), 32),
    ("IN", "instance", (8, 56, 56, 256), 256),
    ("LN", "layer", (8192, 4096), None),
    ("RMS", "rms", (8192, 4096), None),
]
SMOKE_CASES = [
    ("GN(4)", "group", (2, 4, 4, 16), 4),
    ("IN", "instance", (2, 4, 4, 8), 8),
    ("LN", "layer", (16, 32), None),
    ("RMS", "rms", (16, 32), None),
]
DTYPES = ("float32", "bfloat16")
PASSES = ("fwd", "fwd+bwd")
EPSILON = 1e-5
REPEATS = 15
#: Seconds after which a part stops measuring (its rows say "skipped: time
#: budget"): the PyTorch part from the start, the JAX worker from its own
#: start (it is killed at JAX_TIMEOUT_S), so that the whole run stays under 4 minutes.
TORCH_BUDGET_S = 150.0
JAX_BUDGET_S = 45.0
JAX_TIMEOUT_S = 80.0
KERAS_MISSING = "keras not installed"


def _add_wheels(paths):
    for path in paths or ():
        path = Path(path)
        wheels = sorted(path.glob("*.whl")) if path.is_dir() else [path]
        sys.path[:0] = [str(w) for w in wheels]


def _keras(backend):
    """``keras`` (on ``backend``) or None when it is not installed."""
    os.environ["KERAS_BACKEND"] = backend
    try:
        import keras
    except ImportError:
        return None
    return keras


def _load_kernels():
    """``normlab.backends.triton``; where Keras is missing, without running
    normlab's package (which imports Keras): its parents as bare packages."""
    try:
        import keras  # noqa: F401
    except ImportError:
        for name, path in (("normlab", ROOT / "normlab"), ("normlab.backends", ROOT / "normlab" / "backends")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    sys.path.insert(0, str(ROOT))
    import normlab.backends.triton as kernels

    return kernels


class Clock:
    """Median seconds per call of ``fn``: CUDA events around batches of calls
    (``perf_counter`` on the CPU, for --smoke)."""

    def __init__(self, torch, device, repeats=REPEATS):
        self.torch, self.cuda, self.repeats = torch, device == "cuda", repeats

    def _batch(self, fn, inner):
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return time.perf_counter() - start
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def __call__(self, fn):
        for _ in range(3):
            fn()
        once = self._batch(fn, 1)
        inner = max(1, min(200, int(1e-3 / max(once, 1e-7))))
        return statistics.median(self._batch(fn, inner) / inner for _ in range(self.repeats))


def _copy_bandwidth(torch, clock, device, smoke):
    n = (1 << 16) if smoke else (1 << 26)  # 256 MiB of float32 on a GPU
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = clock(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds / 1e9


# ---------------------------------------------------------------------------
# PyTorch.


def _torch_impls(torch, kernels, keras, normlab, kind, x, groups, device):
    """``{name: (call(x) -> y, params) or reason}`` for one case; ``x`` channels-last."""
    import torch.nn.functional as F

    c = x.shape[-1]
    f32 = dict(dtype=torch.float32, device=device)
    gamma, beta = torch.ones(c, **f32).requires_grad_(), torch.zeros(c, **f32).requires_grad_()
    native = [t.detach().to(x.dtype).requires_grad_() for t in (gamma, beta)]
    impls = {}
    if kind in ("group", "instance"):
        impls["normlab-triton"] = (lambda t: kernels.group_norm(t, groups=groups, axis=t.ndim - 1, gamma=gamma,
                                                                beta=beta, epsilon=EPSILON), [gamma, beta])
        impls["F.group_norm[NHWC]"] = (  # a channels_last NCHW view; its output viewed back (free)
            lambda t: F.group_norm(t.permute(0, 3, 1, 2), groups, *native, EPSILON).permute(0, 2, 3, 1), native)
        impls["F.group_norm[NCHW]"] = ("nchw", lambda t: F.group_norm(t, groups, *native, EPSILON), native)
        if kind == "instance":
            impls["F.instance_norm[NCHW]"] = ("nchw", lambda t: F.instance_norm(t, weight=native[0], bias=native[1],
                                                                                eps=EPSILON), native)
    elif kind == "layer":
        impls["normlab-triton"] = (lambda t: kernels.layer_norm(t, axes=[1], gamma=gamma, beta=beta, epsilon=EPSILON),
                                   [gamma, beta])
        impls["F.layer_norm"] = (lambda t: F.layer_norm(t, (c,), *native, EPSILON), native)
    else:
        impls["normlab-triton"] = (lambda t: kernels.rms_norm(t, axes=[1], gamma=gamma, beta=None, epsilon=EPSILON),
                                   [gamma])
        impls["F.rms_norm"] = (lambda t: F.rms_norm(t, (c,), native[0], EPSILON), native[:1])
    for name, layers in (("normlab-layer", normlab and normlab.layers), ("keras-layer", keras and keras.layers)):
        impls[name] = KERAS_MISSING if layers is None else _layer(layers, name, kind, groups, x)
    return impls


def _layer(layers, name, kind, groups, x):
    policy = "mixed_bfloat16" if str(x.dtype).endswith("bfloat16") else "float32"
    if kind == "rms":
        layer = layers.RMSNormalization(epsilon=EPSILON, dtype=policy)
    elif kind == "layer":
        layer = layers.LayerNormalization(epsilon=EPSILON, dtype=policy)
    elif kind == "instance" and name == "normlab-layer":
        layer = layers.InstanceNormalization(epsilon=EPSILON, dtype=policy)
    else:
        layer = layers.GroupNormalization(groups=-1 if kind == "instance" else groups, epsilon=EPSILON, dtype=policy)
    layer(x[:1])  # builds it
    return layer, [w.value for w in layer.trainable_weights]


def _plan_note(kernels, kind, x, groups):
    if kind not in ("group", "instance"):
        return ""
    from normlab.backends.triton import channels_last

    n, c = x.shape[0], x.shape[-1]
    p = channels_last.plan(x.numel() // (n * c), c, groups, x.element_size())
    return "declined" if p is None else ("resident" if p.chunk is None else f"chunked({p.chunks(x.numel() // (n * c))})")


def run_torch(args, keras, kernels, started):
    import torch

    device = "cuda" if not args.smoke else "cpu"
    normlab = None
    if keras is not None:
        import normlab
    clock = Clock(torch, device, 1 if args.smoke else REPEATS)
    copy = _copy_bandwidth(torch, clock, device, args.smoke)
    rows = []
    for name, kind, shape, groups in SMOKE_CASES if args.smoke else CASES:
        for dtype_name in DTYPES:
            dtype = getattr(torch, dtype_name)
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(shape, dtype=torch.float32, device=device, generator=gen).to(dtype)
            dy = torch.randn(shape, dtype=torch.float32, device=device, generator=gen).to(dtype)
            nchw = (x.permute(0, 3, 1, 2).contiguous(), dy.permute(0, 3, 1, 2).contiguous()) if x.ndim == 4 else None
            impls = _torch_impls(torch, kernels, keras, normlab, kind, x, groups, device)
            for impl, spec in impls.items():
                for pass_name in PASSES:
                    row = dict(case=name, kind=kind, shape=list(shape), dtype=dtype_name, pass_=pass_name, impl=impl)
                    rows.append(row)
                    if isinstance(spec, str) or time.perf_counter() - started > TORCH_BUDGET_S:
                        row["note"] = spec if isinstance(spec, str) else "skipped: time budget"
                        _print(row)
                        continue
                    inputs, (call, params) = (nchw, spec[1:]) if spec[0] == "nchw" else ((x, dy), spec)
                    if impl == "normlab-triton":
                        row["note"] = _plan_note(kernels, kind, x, groups)
                    try:
                        _measure(torch, clock, row, call, params, *inputs, copy)
                    except Exception as error:  # one implementation failing must not cost the run
                        row["note"] = f"error: {type(error).__name__}: {error}"[:300]
                    _print(row)
    return dict(copy_GBps=copy, rows=rows)


def _measure(torch, clock, row, call, params, x, dy, copy):
    """Times ``call`` (a function or a Keras layer) into ``row``."""
    if row["pass_"] == "fwd":
        if call(x) is None:
            row["note"] = "declined"
            return
        with torch.no_grad():
            seconds = clock(lambda: call(x))
        moved = 2
    else:
        xg = x.detach().requires_grad_()

        def step():
            return torch.autograd.grad(call(xg), [xg] + list(params), dy)

        seconds = clock(step)
        moved = 5
    gbps = moved * x.numel() * x.element_size() / seconds / 1e9
    row.update(ms=seconds * 1e3, GBps=gbps, copy_fraction=gbps / copy)


def _print(row):
    timing = f"{row['ms']:9.3f} ms {row['GBps']:8.1f} GB/s {row['copy_fraction']:5.2f} copy" if "ms" in row else ""
    print(f"{row['case']:7} {str(tuple(row['shape'])):20} {row['dtype']:9} {row['pass_']:8} {row['impl']:22} "
          f"{timing} {row.get('note', '')}", flush=True)


# ---------------------------------------------------------------------------
# JAX, in its own process (Keras picks its backend at import).


def run_jax(args, keras):
    import jax
    import jax.numpy as jnp

    if keras is None:
        return dict(note=KERAS_MISSING, rows=[])
    import normlab

    rows = []
    started = time.perf_counter()
    for name, kind, shape, groups in SMOKE_CASES if args.smoke else CASES:
        for dtype_name in DTYPES:
            x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32).astype(dtype_name)
            for impl, layers in (("normlab-layer", normlab.layers), ("keras-layer", keras.layers)):
                layer = _layer(layers, impl, kind, groups, x)[0]
                trainable = [v.value for v in layer.trainable_variables]
                others = [v.value for v in layer.non_trainable_variables]

                def forward(tv, xx, layer=layer, others=others):
                    return layer.stateless_call(tv, others, xx)[0]

                fwd = jax.jit(forward)
                fwd_bwd = jax.jit(lambda tv, xx, forward=forward: jax.vjp(forward, tv, xx)[1](forward(tv, xx)))
                for pass_name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                    row = dict(case=name, kind=kind, shape=list(shape), dtype=dtype_name, pass_=pass_name, impl=impl)
                    rows.append(row)
                    if time.perf_counter() - started > JAX_BUDGET_S:
                        row["note"] = "skipped: time budget"
                        continue
                    try:
                        seconds = _wall(lambda fn=fn: jax.block_until_ready(fn(trainable, x)),
                                        1 if args.smoke else REPEATS)
                        row["ms"] = seconds * 1e3
                    except Exception as error:
                        row["note"] = f"error: {type(error).__name__}: {error}"[:300]
                    print(f"jax {name:7} {dtype_name:9} {pass_name:8} {impl:14} {row.get('ms', float('nan')):9.3f} ms "
                          f"{row.get('note', '')}", flush=True)
    return dict(backend=jax.default_backend(), rows=rows)


def _wall(fn, repeats):
    for _ in range(3):
        fn()
    once = time.perf_counter()
    fn()
    once = time.perf_counter() - once
    inner = max(1, min(200, int(1e-3 / max(once, 1e-7))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def _jax_subprocess(args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "jax.json"
        env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        if args.smoke:
            env["JAX_PLATFORMS"] = "cpu"
        command = [sys.executable, __file__, "--jax-worker", str(out)] + (["--smoke"] if args.smoke else [])
        for wheel in args.keras_wheel or ():
            command += ["--keras-wheel", wheel]
        try:
            done = subprocess.run(command, env=env, timeout=JAX_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return dict(note=f"the JAX worker ran past {JAX_TIMEOUT_S} s", rows=[])
        if done.returncode or not out.exists():
            return dict(note=f"the JAX worker failed (exit {done.returncode})", rows=[])
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------
# Targets (docs/gpu.md).


def _time(rows, **where):
    found = [r for r in rows if all(r.get(k) == v for k, v in where.items()) and "ms" in r]
    return found[0]["ms"] if found else None


def targets(torch_rows, jax_rows):
    """``[(target, case, value, verdict)]``, verdict PASS/FAIL/n.a."""
    out = []

    def add(target, case, value, ok):
        out.append((target, case, value, "n.a." if ok is None else "PASS" if ok else "FAIL"))

    for r in torch_rows:
        key = dict(case=r["case"], shape=r["shape"], dtype=r["dtype"], pass_=r["pass_"])
        label = f"{r['case']} {tuple(r['shape'])} {r['dtype']} {r['pass_']}"
        if r["impl"] != "normlab-triton" or "ms" not in r:
            continue
        if r["kind"] in ("group", "instance"):
            if r["pass_"] == "fwd" and r["dtype"] == "bfloat16":
                add("GN/IN fwd >= 0.6 copy", label, round(r["copy_fraction"], 3), r["copy_fraction"] >= 0.6)
            if r["pass_"] == "fwd+bwd":
                for other, factor in (("F.group_norm[NHWC]", 2.0), ("keras-layer", 5.0)):
                    t = _time(torch_rows, impl=other, **key)
                    add(f"fwd+bwd >= {factor:g}x {other}", label, t and round(t / r["ms"], 2),
                        None if t is None else t / r["ms"] >= factor)
        else:
            native = "F.layer_norm" if r["kind"] == "layer" else "F.rms_norm"
            t = _time(torch_rows, impl=native, **key)
            add(f"within 1.1x of {native}", label, t and round(r["ms"] / t, 2), None if t is None else r["ms"] <= 1.1 * t)
    for r in jax_rows:
        if r["impl"] == "normlab-layer" and "ms" in r:
            t = _time(jax_rows, impl="keras-layer", case=r["case"], shape=r["shape"], dtype=r["dtype"], pass_=r["pass_"])
            label = f"{r['case']} {tuple(r['shape'])} {r['dtype']} {r['pass_']}"
            add("JAX not slower than Keras", label, t and round(r["ms"] / t, 2), None if t is None else r["ms"] <= t)
    return out


# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keras-wheel", action="append", metavar="PATH",
                        help="a wheel or a directory of wheels to import Keras (and its pure-Python deps) from")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny shapes: measures nothing")
    parser.add_argument("--out", type=Path, default=None, help=f"the JSON file (default {RESULT}; required with --smoke)")
    parser.add_argument("--jax-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _add_wheels(args.keras_wheel)
    if args.jax_worker:
        args.jax_worker.write_text(json.dumps(run_jax(args, _keras("jax"))))
        return 0
    if args.smoke:
        if args.out is None:
            parser.error("--smoke writes only where --out says (its times are not measurements)")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    started = time.perf_counter()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here "
                 f"(torch {torch.__version__}). On a CPU machine, tests/backends/test_triton.py checks the kernels "
                 "in Triton's interpreter; --smoke checks this script.")
    keras = _keras("torch")
    kernels = _load_kernels()
    if not kernels.available():
        sys.exit("benchmarks/gpu.py needs Triton: pip install triton (or normlab[gpu])")
    import contextlib

    with kernels.interpret_on_cpu() if args.smoke else contextlib.nullcontext():
        torch_part = run_torch(args, keras, kernels, started)
    jax_part = _jax_subprocess(args)
    checks = targets(torch_part["rows"], jax_part.get("rows", []))
    if args.smoke:  # interpreter times: no verdict means anything
        checks = [(target, case, value, "smoke") for target, case, value, _ in checks]
    print("\ntargets (docs/gpu.md):")
    for target, case, value, verdict in checks:
        print(f"  {verdict:5} {target:32} {case:40} {value}")
    import triton

    device = "cpu (smoke: Triton's interpreter, not a measurement)" if args.smoke else torch.cuda.get_device_name()
    result = dict(
        device=device, torch=torch.__version__, triton=triton.__version__,
        keras=keras.__version__ if keras is not None else KERAS_MISSING,
        seconds=round(time.perf_counter() - started, 1), torch_part=torch_part, jax_part=jax_part,
        targets=[dict(target=t, case=c, value=v, verdict=d) for t, c, v, d in checks],
    )
    out = args.out or RESULT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
