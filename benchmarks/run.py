"""normlab benchmark suite: one command, every backend side by side.

    python benchmarks/run.py                      # all backends, full shapes, end-to-end
    python benchmarks/run.py --quick              # smaller shapes, fewer repeats
    python benchmarks/run.py --backends torch --no-e2e

Each Keras backend runs in its own subprocess (Keras picks its backend at
import). Per backend it prints a table of normlab (fast paths on), the
general path (fast paths off), Keras' built-in layer and the best native op
it can name, forward and forward+backward, as medians over repeated calls
after warm-up; effective bandwidth (bytes read + written / time) and its
fraction of a memory-copy roofline measured in the same process; the
speedup over Keras. Then the end-to-end CNN epoch times and a check of the
targets. Everything is also written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
BACKENDS = ("tensorflow", "jax", "torch")

# (name, layer kind, shape, passes). Shapes from the performance issue.
FULL_CASES = [
    ("GroupNorm(32)", "group", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("GroupNorm(32)", "group", (32, 28, 28, 64), ("fwd", "fwd+bwd")),
    ("InstanceNorm", "instance", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("LayerNorm(-1)", "layer", (64, 512, 768), ("fwd", "fwd+bwd")),
    ("BatchNorm(train)", "batch", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
]
QUICK_CASES = [
    ("GroupNorm(32)", "group", (8, 56, 56, 256), ("fwd", "fwd+bwd")),
    ("InstanceNorm", "instance", (8, 28, 28, 128), ("fwd", "fwd+bwd")),
    ("LayerNorm(-1)", "layer", (16, 512, 768), ("fwd", "fwd+bwd")),
    ("BatchNorm(train)", "batch", (8, 28, 28, 256), ("fwd", "fwd+bwd")),
]


# ---------------------------------------------------------------------------
# Worker: one backend, in its own process.


def _timeit(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _timeit_interleaved(fns, repeats, warmup):
    """Median seconds per call of each of ``fns`` (a dict), the calls interleaved.

    One call of each function per round, so that a slow spell of the machine
    (on this shared VM, memory-bound timings drift by 2x for seconds at a
    time) hits every implementation alike and the ratios stay fair. A function
    that raises is reported as its exception.
    """
    alive, results = {}, {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            alive[name] = fn
        except Exception as error:  # a native op this backend lacks
            results[name] = error
    times = {name: [] for name in alive}
    for _ in range(repeats):
        for name, fn in alive.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        ts.sort()
        results[name] = ts[len(ts) // 2]
    return results


def _floor_axes(kind):
    """The axes a normalization's statistics reduce (NHWC data): per sample
    and channel for group/instance norm, per row for layer norm, per
    channel for batch norm.

    The floor of an op is timed as ``x * sum(x, axes)`` forward and, for
    forward+backward, ``dy * sum(dy, axes)`` besides: one reduction and one
    full-size operation (a fresh output) per pass, in the backend's own
    operations and compiled the same way as the layers. Any normalization
    does more (it also needs ``sum(x^2)``, a shift and a scale, and a
    backward that reads ``x`` as well as ``dy``), so no implementation
    composed of that backend's operations beats the floor, and Keras'
    time over the floor bounds the speedup over Keras they can reach."""
    return {"group": (1, 2), "instance": (1, 2), "layer": (-1,), "batch": (0, 1, 2)}[kind]


def _layer(source, kind, keras, normlab):
    if source == "keras":
        make = {
            "group": lambda: keras.layers.GroupNormalization(groups=32),
            "instance": lambda: keras.layers.GroupNormalization(groups=-1),
            "layer": lambda: keras.layers.LayerNormalization(axis=-1),
            "batch": lambda: keras.layers.BatchNormalization(),
        }
    else:
        make = {
            "group": lambda: normlab.GroupNormalization(groups=32),
            "instance": lambda: normlab.InstanceNormalization(),
            "layer": lambda: normlab.LayerNormalization(axis=-1),
            "batch": lambda: normlab.BatchNormalization(),
        }
    return make[kind]()


class _Torch:
    name = "torch"
    mode = "eager"

    def __init__(self):
        import torch

        self.torch = torch

    def tensor(self, a):
        return self.torch.from_numpy(a)

    def copy(self, x):
        return lambda: x * 2.0

    def sync(self, out):
        return out

    def layer_fns(self, layer, x, dy, kwargs):
        torch = self.torch
        layer(x, **kwargs)  # build
        params = [w.value for w in layer.trainable_weights]
        xg = x.detach().clone().requires_grad_(True)

        def fwd():
            with torch.no_grad():
                return layer(x, **kwargs)

        def fwd_bwd():
            y = layer(xg, **kwargs)
            return torch.autograd.grad(y, [xg] + params, dy)

        return fwd, fwd_bwd

    def floor(self, kind, x, dy):
        torch, axes = self.torch, _floor_axes(kind)

        def fwd():
            with torch.no_grad():
                return x * x.sum(axes, keepdim=True)

        def fwd_bwd():
            with torch.no_grad():
                return fwd(), dy * dy.sum(axes, keepdim=True)

        return fwd, fwd_bwd

    def native(self, kind, x_np, dy_np):
        import torch.nn.functional as F

        torch = self.torch
        c = x_np.shape[-1]
        gamma = torch.ones(c, requires_grad=True)
        beta = torch.zeros(c, requires_grad=True)
        if kind == "layer":
            x = torch.from_numpy(x_np)
            dy = torch.from_numpy(dy_np)

            def op(t):
                return F.layer_norm(t, (c,), gamma, beta, 1e-3)

            name = "F.layer_norm"
        elif kind == "batch":
            # The channels-last data viewed (not copied) as torch.channels_last.
            x = torch.from_numpy(x_np).permute(0, 3, 1, 2)
            dy = torch.from_numpy(dy_np).permute(0, 3, 1, 2)
            rm, rv = torch.zeros(c), torch.ones(c)

            def op(t):
                return F.batch_norm(t, rm, rv, gamma, beta, True, 0.01, 1e-3)

            name = "F.batch_norm, channels_last view"
        else:
            # NCHW-contiguous copies made outside the timing: the best case.
            x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
            dy = torch.from_numpy(dy_np).permute(0, 3, 1, 2).contiguous()
            groups = 32 if kind == "group" else c

            def op(t):
                return F.group_norm(t, groups, gamma, beta, 1e-3)

            name = "F.group_norm, NCHW contiguous"
        xg = x.detach().clone().requires_grad_(True)

        def fwd():
            with torch.no_grad():
                return op(x)

        def fwd_bwd():
            return torch.autograd.grad(op(xg), [xg, gamma, beta], dy)

        return name, fwd, fwd_bwd


class _Jax:
    name = "jax"
    mode = "jit"

    def __init__(self):
        import jax

        self.jax = jax

    def tensor(self, a):
        return self.jax.device_put(a)

    def copy(self, x):
        f = self.jax.jit(lambda t: t * 2.0)
        return lambda: self.jax.block_until_ready(f(x))

    def layer_fns(self, layer, x, dy, kwargs):
        jax = self.jax
        layer(x, **kwargs)  # build
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            y, new_ntv = layer.stateless_call(tv, ntv, x, **kwargs)
            return y, new_ntv

        @jax.jit
        def forward_backward(tv, ntv, x, dy):
            def f(x, tv):
                return layer.stateless_call(tv, ntv, x, **kwargs)

            (y, new_ntv), vjp = jax.vjp(f, x, tv)
            zero = jax.tree_util.tree_map(jax.numpy.zeros_like, new_ntv)
            return vjp((dy, zero)), new_ntv

        return (lambda: jax.block_until_ready(forward(tv, ntv, x)),
                lambda: jax.block_until_ready(forward_backward(tv, ntv, x, dy)))

    def floor(self, kind, x, dy):
        jax, axes = self.jax, _floor_axes(kind)

        def fwd(x):
            return x * x.sum(axes, keepdims=True)

        def fwd_bwd(x, dy):
            return fwd(x), dy * dy.sum(axes, keepdims=True)

        fwd_jit, fwd_bwd_jit = jax.jit(fwd), jax.jit(fwd_bwd)
        return (lambda: jax.block_until_ready(fwd_jit(x)),
                lambda: jax.block_until_ready(fwd_bwd_jit(x, dy)))

    def native(self, kind, x_np, dy_np):
        jax = self.jax
        jnp = jax.numpy
        c = x_np.shape[-1]
        x, dy = jnp.asarray(x_np), jnp.asarray(dy_np)
        gamma, beta = jnp.ones(c), jnp.zeros(c)
        if kind == "layer":
            axes, shape = (-1,), x.shape
        elif kind == "batch":
            axes, shape = (0, 1, 2), x.shape
        else:
            groups = 32 if kind == "group" else c
            axes, shape = (1, 2, 4), x.shape[:3] + (groups, c // groups)

        def op(x, gamma, beta):
            y = jax.nn.standardize(x.reshape(shape), axis=axes, epsilon=1e-3).reshape(x.shape)
            return y * gamma + beta

        forward = jax.jit(op)
        forward_backward = jax.jit(lambda x, g, b, dy: jax.vjp(op, x, g, b)[1](dy))
        return ("jax.nn.standardize (one-pass variance)",
                lambda: jax.block_until_ready(forward(x, gamma, beta)),
                lambda: jax.block_until_ready(forward_backward(x, gamma, beta, dy)))


class _TensorFlow:
    name = "tensorflow"

    def __init__(self, jit_compile):
        import tensorflow as tf

        self.tf = tf
        self.jit_compile = jit_compile
        self.mode = "tf.function+XLA" if jit_compile else "tf.function"

    def tensor(self, a):
        return self.tf.constant(a)

    def copy(self, x):
        f = self.tf.function(lambda t: t * 2.0, jit_compile=self.jit_compile)
        return lambda: f(x)

    def _function(self, fn):
        return self.tf.function(fn, jit_compile=self.jit_compile)

    def layer_fns(self, layer, x, dy, kwargs):
        tf = self.tf
        layer(x, **kwargs)  # build
        params = layer.trainable_variables

        forward = self._function(lambda x: layer(x, **kwargs))

        def fb(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, **kwargs)
            return tape.gradient(y, [x] + list(params), output_gradients=dy)

        forward_backward = self._function(fb)
        return lambda: forward(x), lambda: forward_backward(x, dy)

    def floor(self, kind, x, dy):
        tf, axes = self.tf, list(_floor_axes(kind))

        def fwd(x):
            return x * tf.reduce_sum(x, axes, keepdims=True)

        def fwd_bwd(x, dy):
            return fwd(x), dy * tf.reduce_sum(dy, axes, keepdims=True)

        fwd_fn, fwd_bwd_fn = self._function(fwd), self._function(fwd_bwd)
        return lambda: fwd_fn(x), lambda: fwd_bwd_fn(x, dy)

    def native(self, kind, x_np, dy_np):
        tf = self.tf
        c = x_np.shape[-1]
        x, dy = tf.constant(x_np), tf.constant(dy_np)
        gamma, beta = tf.Variable(tf.ones(c)), tf.Variable(tf.zeros(c))
        if kind == "batch":
            def op(x):
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)
                return y

            name = "tf.nn.fused_batch_norm (NHWC kernel)"
        else:
            if kind == "layer":
                axes, shape = [-1], x.shape
            else:
                groups = 32 if kind == "group" else c
                axes, shape = [1, 2, 4], list(x.shape[:3]) + [groups, c // groups]

            def op(x):
                xs = tf.reshape(x, shape)
                mean, var = tf.nn.moments(xs, axes, keepdims=True)
                y = tf.reshape(tf.nn.batch_normalization(xs, mean, var, None, None, 1e-3), tf.shape(x))
                return y * gamma + beta

            name = "tf.nn.moments + batch_normalization"
        forward = self._function(op)

        def fb(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = op(x)
            return tape.gradient(y, [x, gamma, beta], output_gradients=dy)

        forward_backward = self._function(fb)
        return name, lambda: forward(x), lambda: forward_backward(x, dy)


def _mnist(limit=10_000):
    images, labels = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"
    import numpy as np

    if images.exists() and labels.exists():
        with gzip.open(images, "rb") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
        with gzip.open(labels, "rb") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return (x[:limit].astype("float32") / 255.0), y[:limit].astype("int32"), "MNIST t10k"
    rng = np.random.default_rng(0)
    return rng.random((limit, 784), dtype=np.float32), rng.integers(0, 10, limit).astype("int32"), "random"


E2E_EPOCHS = 3


def _e2e(keras, normlab, quick):
    import numpy as np

    x, y, source = _mnist(2_000 if quick else 10_000)
    norms = {
        "normlab GroupNormalization(5)": lambda: normlab.GroupNormalization(groups=5),
        "keras GroupNormalization(5)": lambda: keras.layers.GroupNormalization(groups=5),
        "normlab BatchNormalization": lambda: normlab.BatchNormalization(),
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(),
    }
    models = {}
    for name, make in norms.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((784,)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(10, 3),
            make(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # builds and compiles the step
        models[name] = model
    # Epochs of the four models interleaved, E2E_EPOCHS rounds: a slow spell of
    # the machine then hits every model alike; the median epoch is reported.
    seconds = {name: [] for name in models}
    first = {}
    for _ in range(1 if quick else E2E_EPOCHS):
        for name, model in models.items():
            start = time.perf_counter()
            history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
            first.setdefault(name, history.history)
    rows = []
    for name in models:
        median = float(np.median(seconds[name]))
        rows.append({
            "norm": name, "seconds": median, "epochs_seconds": seconds[name], "images": len(x),
            "data": source, "loss": float(first[name]["loss"][-1]),
            "accuracy": float(first[name]["accuracy"][-1]),
        })
        print(f"  e2e {name}: {median:.2f} s (median of {len(seconds[name])} epochs)",
              file=sys.stderr, flush=True)
    return rows


def worker(backend, quick, e2e, repeats, out):
    import numpy as np

    import keras
    import normlab

    assert keras.backend.backend() == backend, keras.backend.backend()
    cases = QUICK_CASES if quick else FULL_CASES
    warmup = 2
    if backend == "torch":
        runners = [_Torch()]
    elif backend == "jax":
        runners = [_Jax()]
    else:
        runners = [_TensorFlow(False), _TensorFlow(True)]

    result = {"backend": backend, "rows": [], "roofline": {}, "e2e": []}
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(8, 56, 56, 256)).astype("float32")

    def measure_copies():
        copies = {"numpy copy GB/s": 2 * probe.nbytes / _timeit(lambda: probe.copy(), repeats, warmup) / 1e9}
        for runner in runners:
            t = _timeit(runner.copy(runner.tensor(probe)), repeats, warmup)
            copies[f"{runner.mode} copy GB/s"] = 2 * probe.nbytes / t / 1e9
        for key, value in copies.items():  # the best of two measurements
            result["roofline"][key] = max(value, result["roofline"].get(key, 0.0))
        # The roofline: the faster of the NumPy copy and the backend's own.
        result["roofline"]["roofline GB/s"] = max(v for k, v in result["roofline"].items() if k != "roofline GB/s")

    measure_copies()

    for name, kind, shape, passes in cases:
        x_np = rng.normal(size=shape).astype("float32")
        dy_np = rng.normal(size=shape).astype("float32")
        nbytes = x_np.nbytes
        kwargs = {"training": True} if kind == "batch" else {}
        for runner in runners:
            x, dy = runner.tensor(x_np), runner.tensor(dy_np)
            impls = {}
            for source in ("normlab", "general", "keras"):
                if source == "general" and runner.mode == "tf.function+XLA":
                    continue
                layer = _layer("keras" if source == "keras" else "normlab", kind, keras, normlab)
                if source == "general":
                    with normlab.backends.disabled():
                        fns = runner.layer_fns(layer, x, dy, kwargs)
                    fns = tuple(_disabled(normlab, f) for f in fns)
                else:
                    fns = runner.layer_fns(layer, x, dy, kwargs)
                impls[source] = (None,) + tuple(fns)
            impls["native"] = runner.native(kind, x_np, dy_np)
            impls["floor"] = (None,) + tuple(runner.floor(kind, x, dy))
            for p, label in enumerate(("fwd", "fwd+bwd")):
                if label not in passes:
                    continue
                row = {"op": name, "shape": list(shape), "pass": label, "mode": runner.mode}
                moved = (2 if label == "fwd" else 5) * nbytes
                timed = _timeit_interleaved({source: fns[1 + p] for source, fns in impls.items()},
                                            repeats, warmup)
                for source, fns in impls.items():
                    seconds = timed[source]
                    if isinstance(seconds, Exception):
                        print(f"  {source} {name} {label}: {type(seconds).__name__}: {seconds}",
                              file=sys.stderr)
                        continue
                    row[source] = {"ms": seconds * 1e3, "GB/s": moved / seconds / 1e9}
                    if source == "native":
                        row[source]["name"] = fns[0]
                if "keras" in row and "normlab" in row:
                    row["speedup_vs_keras"] = row["keras"]["ms"] / row["normlab"]["ms"]
                if "native" in row and "normlab" in row:
                    row["normlab_over_native"] = row["normlab"]["ms"] / row["native"]["ms"]
                if "keras" in row and "floor" in row:
                    row["keras_over_floor"] = row["keras"]["ms"] / row["floor"]["ms"]
                result["rows"].append(row)
                print(f"  {runner.mode} {name} {tuple(shape)} {label}: "
                      f"normlab {row.get('normlab', {}).get('ms', float('nan')):.2f} ms, "
                      f"keras {row.get('keras', {}).get('ms', float('nan')):.2f} ms", file=sys.stderr, flush=True)
    measure_copies()  # again at the end: the roofline is the best seen
    roof = result["roofline"]["roofline GB/s"]
    for row in result["rows"]:
        for source in ("normlab", "general", "keras", "native", "floor"):
            if source in row:
                row[source]["roofline"] = row[source]["GB/s"] / roof
    if e2e:
        result["e2e"] = _e2e(keras, normlab, quick)
    Path(out).write_text(json.dumps(result))


def _disabled(normlab, fn):
    def run():
        with normlab.backends.disabled():
            return fn()

    return run


# ---------------------------------------------------------------------------
# Driver: one subprocess per backend, tables, targets, JSON.


def _fmt(cell, key="ms"):
    if not cell:
        return "—"
    return f"{cell[key]:.2f}"


def print_table(result):
    roof = result["roofline"]
    load = result.get("load_average_after")
    print(f"\n=== {result['backend']}  (copy roofline: "
          + ", ".join(f"{k} {v:.1f}" for k, v in roof.items()) + ")"
          + (f"  [load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}]" if load else ""))
    header = (f"{'op':17} {'shape':17} {'pass':8} {'mode':16} {'normlab ms':>10} {'GB/s':>6} {'roof':>5} "
              f"{'general ms':>10} {'keras ms':>9} {'native ms':>9} {'floor ms':>8} {'x keras':>7} "
              f"{'max x':>6} {'/native':>7}  native op")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        n = row.get("normlab")
        gbs = f"{n['GB/s']:.1f}" if n else "—"
        frac = f"{n['roofline']:.2f}" if n else "—"
        print(f"{row['op']:17} {str(tuple(row['shape'])):17} {row['pass']:8} {row['mode']:16} "
              f"{_fmt(n):>10} {gbs:>6} {frac:>5} "
              f"{_fmt(row.get('general')):>10} {_fmt(row.get('keras')):>9} {_fmt(row.get('native')):>9} "
              f"{_fmt(row.get('floor')):>8} {row.get('speedup_vs_keras', float('nan')):>7.2f} "
              f"{row.get('keras_over_floor', float('nan')):>6.2f} {row.get('normlab_over_native', float('nan')):>7.2f}  "
              f"{row.get('native', {}).get('name', '—')}")
    if result["e2e"]:
        print(f"\n  end-to-end: classic CNN, one epoch, batch 32, {result['e2e'][0]['images']} "
              f"{result['e2e'][0]['data']} images; median of "
              f"{len(result['e2e'][0]['epochs_seconds'])} interleaved epochs")
        for row in result["e2e"]:
            print(f"    {row['norm']:32} {row['seconds']:7.2f} s   loss {row['loss']:.3f}  acc {row['accuracy']:.3f}")


def _speedup(row):
    """``1.53x``, with the bound the floor sets (Keras' time over the
    floor's) where that is below what was asked of this row."""
    s, bound = row.get("speedup_vs_keras"), row.get("keras_over_floor")
    if s is None:
        return "n/a"
    return f"{s:.2f}x" + (f" (bound: Keras/floor {bound:.2f}x)" if bound is not None else "")


def targets(results):
    """The performance issue's targets, checked on the measured rows."""
    checks = []

    def rows(backend, op, pass_, mode=None, shape=None):
        for row in results.get(backend, {}).get("rows", []):
            if row["op"] == op and row["pass"] == pass_ and (mode is None or row["mode"] == mode) \
                    and (shape is None or tuple(row["shape"]) == shape):
                yield row

    for backend in results:
        need = 5.0 if backend == "torch" else 2.0
        for op in ("GroupNorm(32)", "InstanceNorm"):
            for row in rows(backend, op, "fwd+bwd"):
                s = row.get("speedup_vs_keras")
                checks.append((f"{backend} {row['mode']} {op} {tuple(row['shape'])} fwd+bwd >= {need:g}x Keras",
                               s is not None and s >= need, _speedup(row)))
        for op in ("LayerNorm(-1)", "BatchNorm(train)"):
            composes = not (backend == "torch" and op == "LayerNorm(-1)")  # Keras calls F.layer_norm there
            need_ln = 1.5 if composes else 1.0
            for pass_ in ("fwd", "fwd+bwd"):
                for row in rows(backend, op, pass_):
                    s = row.get("speedup_vs_keras")
                    checks.append((f"{backend} {row['mode']} {op} {pass_} >= {need_ln:g}x Keras",
                                   s is not None and s >= need_ln, _speedup(row)))
        for row in rows(backend, "GroupNorm(32)", "fwd", shape=(8, 56, 56, 256)):
            r = row.get("normlab", {}).get("roofline")
            f = row.get("floor", {}).get("roofline")
            checks.append((f"{backend} {row['mode']} GroupNorm(32) (8,56,56,256) fwd >= 0.5 of copy roofline",
                           r is not None and r >= 0.5,
                           (f"{r:.2f}" if r else "n/a") + (f" (floor: {f:.2f})" if f else "")))
        if backend == "torch":
            for op in ("GroupNorm(32)", "InstanceNorm"):
                for row in rows(backend, op, "fwd"):
                    q = row.get("normlab_over_native")
                    checks.append((f"torch {op} {tuple(row['shape'])} fwd (NHWC) within 1.25x of F.group_norm NCHW",
                                   q is not None and q <= 1.25, f"{q:.2f}x" if q else "n/a"))
        e2e = {r["norm"]: r["seconds"] for r in results[backend].get("e2e", [])}
        for kind in ("GroupNormalization(5)", "BatchNormalization"):
            a, b = e2e.get(f"normlab {kind}"), e2e.get(f"keras {kind}")
            if a and b:
                checks.append((f"{backend} end-to-end epoch with {kind} no slower than Keras",
                               a <= b, f"{a:.2f} s vs {b:.2f} s"))
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 10, quick 5)")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end CNN epochs")
    parser.add_argument("--json", default=str(RESULTS / "latest.json"), help="where to write the results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 10)
    if args.worker:
        worker(args.worker, args.quick, args.e2e, repeats, args.out)
        return 0

    started = time.perf_counter()
    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"[{backend}] running ...", file=sys.stderr, flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = handle.name
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, __file__, "--worker", backend, "--out", out, "--repeats", str(repeats)]
        cmd += ["--quick"] if args.quick else []
        cmd += [] if args.e2e else ["--no-e2e"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(f"[{backend}] failed with exit code {proc.returncode}", file=sys.stderr)
            continue
        results[backend] = json.loads(Path(out).read_text())
        results[backend]["seconds"] = time.perf_counter() - t0
        results[backend]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        os.unlink(out)
        print_table(results[backend])

    checks = targets(results)
    print("\n=== targets")
    for what, ok, value in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {what}: {value}")
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    report = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py"] + (argv or sys.argv[1:])),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "repeats": repeats, "quick": args.quick, "seconds": total, "backends": results,
        "targets": [{"target": w, "met": ok, "value": v} for w, ok, v in checks],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
