"""One backend in its own process (Keras picks its backend at import): rows, roofline, work, e2e."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from . import machine, stats
from .runners import call_kwargs, make_layer, make_runners
from .timing import time_rounds

# (name, layer kind, shape, passes). Shapes from the performance issue; two small
# ones where the time is the framework's per-op dispatch (TensorFlow and torch eagerly);
# and a few wide rows (64 tokens of 4096 features), where per-task partial sums of
# the parameters' gradients can cost more than the rows themselves.
SMALL_CASES = [
    ("GroupNorm(32)", "group", (2, 8, 8, 64), ("fwd", "fwd+bwd")),
    ("BatchNorm(train)", "batch", (2, 8, 8, 64), ("fwd", "fwd+bwd")),
    ("LayerNorm(-1)", "layer", (4, 16, 4096), ("fwd", "fwd+bwd")),
]
#: Shapes timed and shown but not held to the targets (not the performance issue's).
UNTARGETED = {(4, 16, 4096)}
FULL_CASES = [
    ("GroupNorm(32)", "group", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("GroupNorm(32)", "group", (32, 28, 28, 64), ("fwd", "fwd+bwd")),
    ("InstanceNorm", "instance", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("LayerNorm(-1)", "layer", (64, 512, 768), ("fwd", "fwd+bwd")),
    ("RMSNorm(-1)", "rms", (64, 512, 768), ("fwd", "fwd+bwd")),
    ("BatchNorm(train)", "batch", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("BatchNorm(infer)", "batch_infer", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    *SMALL_CASES,
]
QUICK_CASES = [
    ("GroupNorm(32)", "group", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("InstanceNorm", "instance", (8, 28, 28, 128), ("fwd", "fwd+bwd")),
    ("LayerNorm(-1)", "layer", (16, 512, 768), ("fwd", "fwd+bwd")),
    ("RMSNorm(-1)", "rms", (16, 512, 768), ("fwd", "fwd+bwd")),
    ("BatchNorm(train)", "batch", (8, 28, 28, 256), ("fwd", "fwd+bwd")),
    ("BatchNorm(infer)", "batch_infer", (8, 28, 28, 256), ("fwd", "fwd+bwd")),
    *SMALL_CASES,
]
PASSES = ("fwd", "fwd+bwd")


def select_cases(quick, rows=None, passes=None):
    """The cases to run: ``rows`` a regular expression searched in ``"op shape"``
    (``GroupNorm``, ``LayerNorm|BatchNorm``, ``56, 56``), ``passes`` a subset of :data:`PASSES`."""
    out = []
    for name, kind, shape, ps in QUICK_CASES if quick else FULL_CASES:
        if rows and not re.search(rows, f"{name} {shape}", re.IGNORECASE):
            continue
        ps = tuple(p for p in ps if not passes or p in passes)
        if ps:
            out.append((name, kind, shape, ps))
    return out


def _log(text):
    print(text, file=sys.stderr, flush=True)


def _implementations(runner, kind, x_np, dy_np, keras, normlab):
    """``{impl: (native op's name or None, fwd Call, fwd+bwd Call)}`` for one case on one runner."""
    x, dy = runner.tensor(x_np), runner.tensor(dy_np)
    kwargs = call_kwargs(kind)
    impls = {}
    for source in ("normlab", "general", "keras"):
        if source == "general" and runner.mode == "tf.function+XLA":
            continue
        layer = make_layer("keras" if source == "keras" else "normlab", kind, keras, normlab)
        if source == "general":
            with normlab.backends.disabled():
                fns = runner.layer_fns(layer, x, dy, kwargs, context=normlab.backends.disabled)
        else:
            fns = runner.layer_fns(layer, x, dy, kwargs)
        impls[source] = (None,) + tuple(fns)
    impls["native"] = runner.native(kind, x_np, dy_np)
    impls["floor"] = (None,) + tuple(runner.floor(kind, x, dy))
    return impls


def _work(runner, impls, p, nbytes):
    from . import work

    out = {}
    for source, fns in impls.items():
        try:
            w = work.count(runner, fns[1 + p])
        except Exception as error:  # a counter that cannot see this function
            out[source] = {"error": f"{type(error).__name__}: {error}"}
            continue
        w["bytes_per_input"] = w["bytes"] / nbytes
        w["bytes_max_per_input"] = w["bytes_max"] / nbytes
        out[source] = w
    return out


def _sweeps(cells, config, rounds, warmup, min_sample_s):
    """Per cell, ``(seconds, calls, preempted)`` over ``rounds`` rounds spread across sweeps.

    The rounds of a row are not taken in one stretch: each of ``sweeps``
    sweeps takes a few rounds of every row in turn, so that a slow spell of
    the machine (seconds long on a shared one) lands on a few rounds of many
    rows rather than on every round of one row, and the rounds of a row are
    samples of the whole run. The first sweep warms up (and compiles); later
    ones make one untimed call of each implementation first (the other rows
    ran in between).
    """
    sweeps = max(1, min(config.get("sweeps") or 1, rounds))
    per_sweep = [rounds // sweeps + (i < rounds % sweeps) for i in range(sweeps)]
    out = [({}, None, {}) for _ in cells]
    for i, n in enumerate(per_sweep):
        for c, (name, shape, label, runner, impls, _) in enumerate(cells):
            seconds, calls, preempted = out[c]
            p = PASSES.index(label)
            fns = {s: fns[1 + p] for s, fns in impls.items() if i == 0 or s in seconds}
            samples, calls, pre = time_rounds(fns, n, warmup if i == 0 else 1, min_sample_s, calls,
                                              offset=sum(per_sweep[:i]))
            for source, value in samples.items():
                if isinstance(value, Exception):
                    _log(f"  {source} {name} {label}: {type(value).__name__}: {value}")
                    seconds.pop(source, None)  # all of its rounds or none, so that rounds pair up
                    continue
                seconds.setdefault(source, []).extend(value)
                preempted[source] = preempted.get(source, 0) + pre[source]
            out[c] = (seconds, calls, preempted)
    return out


def worker(backend, config, out):
    """Runs every selected case on ``backend`` and writes the result as JSON to ``out``."""
    import keras
    import numpy as np

    import normlab

    assert keras.backend.backend() == backend, keras.backend.backend()
    rounds, warmup = config["rounds"], config["warmup"]
    min_sample_s, max_spread = config["min_sample_ms"] / 1e3, config["max_spread"]
    runners = make_runners(backend, config.get("threads"))
    threads = {}
    for runner in runners:
        threads.update(runner.threads())
    threads["XLA_FLAGS"] = os.environ.get("XLA_FLAGS")
    result = {"backend": backend, "threads": threads, "rows": [], "roofline": {}, "e2e": [],
              "load_worker_start": machine.load()}
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(8, 56, 56, 256)).astype("float32")

    def measure_copies():
        fns = {"numpy copy GB/s": probe.copy}
        fns.update({f"{r.mode} copy GB/s": r.copy(r.tensor(probe)) for r in runners})
        samples, _, _ = time_rounds(fns, rounds, warmup)
        for key, ts in samples.items():  # the median of the rounds, the best of two measurements
            value = 2 * probe.nbytes / stats.median(ts) / 1e9
            result["roofline"][key] = max(value, result["roofline"].get(key, 0.0))
        # The roofline: the faster of the NumPy copy and the backend's own.
        result["roofline"]["roofline GB/s"] = max(v for k, v in result["roofline"].items() if k != "roofline GB/s")

    measure_copies()
    cells = []  # (op, shape, pass, runner, implementations, input bytes): every row, all alive at once
    for name, kind, shape, passes in select_cases(config["quick"], config.get("rows"), config.get("passes")):
        x_np = rng.normal(size=shape).astype("float32")
        dy_np = rng.normal(size=shape).astype("float32")
        for runner in runners:
            impls = _implementations(runner, kind, x_np, dy_np, keras, normlab)
            cells += [(name, shape, label, runner, impls, x_np.nbytes) for label in PASSES if label in passes]
    for cell, (seconds, calls, preempted) in zip(cells, _sweeps(cells, config, rounds, warmup, min_sample_s)):
        name, shape, label, runner, impls, nbytes = cell
        moved = (2 if label == "fwd" else 5) * nbytes
        row = {"op": name, "shape": list(shape), "pass": label, "mode": runner.mode,
               "targeted": tuple(shape) not in UNTARGETED, **stats.summarize_row(seconds, moved, max_spread)}
        for source in seconds:
            row[source].update(calls_per_sample=calls[source], preempted_rounds=preempted[source])
        if "native" in row:
            row["native"]["name"] = impls["native"][0]
        if config.get("work"):
            row["work"] = _work(runner, impls, PASSES.index(label), nbytes)
        result["rows"].append(row)
        _log(f"  {runner.mode} {name} {tuple(shape)} {label}: "
             f"normlab {row.get('normlab', {}).get('ms', float('nan')):.2f} ms, "
             f"keras {row.get('keras', {}).get('ms', float('nan')):.2f} ms, "
             f"x keras {stats.format_ratio(row['ratios'].get('speedup_vs_keras'))}")
    measure_copies()  # again at the end: the roofline is the best seen
    roof = result["roofline"]["roofline GB/s"]
    for row in result["rows"]:
        for source in stats.IMPLS:
            if source in row:
                row[source]["roofline"] = row[source]["GB/s"] / roof
    if config.get("e2e"):
        from .e2e import applications, e2e

        result["e2e"] = e2e(keras, normlab, config["quick"])
        result["applications"] = applications(keras, config["quick"])
    result["load_worker_end"] = machine.load()
    Path(out).write_text(json.dumps(result))
