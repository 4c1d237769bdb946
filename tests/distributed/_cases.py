"""Cases shared by the per-backend workers: layers, data, and the comparisons.

A worker runs each case twice: distributed over the replicas (the global
batch split into consecutive parts, possibly of different sizes), and on
one device. With ``synchronized=True`` every replica's outputs, input
gradients and moving statistics must equal those of one device on the
global batch; with ``synchronized=False`` those of one device on that
replica's part. The loss is ``sum(y * w)`` over the global batch, so the
gradient of a replica's slice is the same slice of the one-device gradient.

Workers print one JSON line per check, ``{"case": ..., "ok": ..., "detail": ...}``,
which the pytest side collects.
"""

from __future__ import annotations

import json
import time
import traceback

import numpy as np

OFFSET = 1e4
#: The layers run with an empty share on the second replica (the last, smaller
#: batch of an epoch split over replicas), and the per-replica batch sizes then.
EMPTY_REPLICA = ("batch_norm", "renorm", "ghost", "evo_norm_b0", "switchable")
EMPTY_SIZES = [4, 0]
#: The layers also run compiled (torch.compile) on batches that vary by step.
COMPILED = ("batch_norm", "ghost", "evo_norm_b0")

def _layers():
    """name -> (layer factory taking ``synchronized``, per-sample shape, uses a mask)."""
    import normlab

    clipping = {"rmax": 2.0, "rmin": 0.5, "dmax": 1.5}
    return {
        "batch_norm": (lambda s: normlab.BatchNormalization(synchronized=s, momentum=0.5), (3, 4), False),
        "batch_norm_mask": (lambda s: normlab.BatchNormalization(synchronized=s, momentum=0.5), (5, 3), True),
        "batch_norm_channels_first": (
            lambda s: normlab.BatchNormalization(axis=1, synchronized=s, momentum=0.5), (3, 2, 2), False),
        "renorm": (lambda s: normlab.BatchNormalization(
            synchronized=s, momentum=0.5, renorm=True, renorm_clipping=clipping, renorm_momentum=0.5), (3, 4), False),
        "ghost": (lambda s: normlab.BatchNormalization(
            synchronized=s, momentum=0.5, virtual_batch_size=2), (3, 4), False),
        "renorm_ghost": (lambda s: normlab.BatchNormalization(
            synchronized=s, momentum=0.5, renorm=True, renorm_clipping=clipping, virtual_batch_size=2), (3, 4), False),
        # every position padding: the moving statistics stay, as one device's do
        "all_padding": (lambda s: normlab.BatchNormalization(synchronized=s, momentum=0.5), (5, 3), True),
        "ghost_all_padding": (lambda s: normlab.BatchNormalization(
            synchronized=s, momentum=0.5, virtual_batch_size=2), (5, 3), True),
        "evo_norm_b0": (lambda s: normlab.EvoNormB0(synchronized=s, momentum=0.5), (2, 2, 3), False),
        "switchable": (lambda s: normlab.SwitchableNormalization(synchronized=s, momentum=0.5), (2, 2, 3), False),
    }


def names():
    return list(_layers())


def layer(name, synchronized):
    return _layers()[name][0](synchronized)


def data(name, sizes, seed=0):
    """Global ``x`` (offset 1e4, a different spread per channel), loss weights ``w`` and mask (or None)."""
    _, shape, masked = _layers()[name]
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    channels = shape[0] if name.endswith("channels_first") else shape[-1]
    spread = np.linspace(0.5, 3.0, channels)
    spread = spread.reshape((channels,) + (1,) * (len(shape) - 1)) if name.endswith("channels_first") else spread
    # EvoNorm-B0 divides x itself: at an offset its batch branch never wins the max.
    offset = {"evo_norm_b0": 0.0}.get(name, OFFSET)
    x = (offset + spread * rng.normal(size=(n,) + shape)).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    mask = None
    if masked:
        mask = rng.random((n,) + shape[:-1]) < 0.7
        mask[:, 0] = True  # every sample keeps one position
        if name.endswith("all_padding"):
            mask[:] = False
    return x, w, mask


def split(array, sizes):
    if array is None:
        return [None] * len(sizes)
    return np.split(array, np.cumsum(sizes)[:-1])


def close(label, got, want, rtol=2e-5, atol=2e-5):
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    if got.shape != want.shape:
        raise AssertionError(f"{label}: shape {got.shape} != {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        error = np.abs(got - want).max()
        raise AssertionError(f"{label}: max |difference| {error:.3g} (scale {np.abs(want).max():.3g})")


def compare(replicas, reference, synchronized, gradients=True):
    """``replicas``: per replica ``(y, dx, weights)``; ``reference``: one-device results.

    With ``synchronized``, ``reference`` is one ``(y, dx, weights)`` on the
    global batch; otherwise a list of them, one per replica's part.
    """
    sizes = [len(r[0]) for r in replicas]
    for i, (y, dx, weights) in enumerate(replicas):
        if synchronized:
            ref_y, ref_dx, ref_weights = reference
            lo = sum(sizes[:i])
            ref_y, ref_dx = ref_y[lo:lo + sizes[i]], None if ref_dx is None else ref_dx[lo:lo + sizes[i]]
        else:
            ref_y, ref_dx, ref_weights = reference[i]
        scale = max(1.0, float(np.abs(ref_y).max(initial=0.0)))
        close(f"replica {i} outputs", y, ref_y, atol=2e-5 * scale)
        if gradients and dx is not None:
            close(f"replica {i} input gradient", dx, ref_dx, atol=2e-5 * max(1.0, float(np.abs(ref_dx).max(initial=0.0))))
        for key, value in ref_weights.items():
            close(f"replica {i} {key}", weights[key], value, rtol=1e-6, atol=2e-5)


def report(case, check):
    """Runs ``check()`` and prints its JSON result line."""
    start = time.perf_counter()
    try:
        check()
        ok, detail = True, ""
    except Exception as error:  # noqa: BLE001 - every failure is reported, the others still run
        ok, detail = False, f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    seconds = round(time.perf_counter() - start, 2)
    print(json.dumps({"case": case, "ok": ok, "seconds": seconds, "detail": detail}), flush=True)


def non_trainable(layer):
    """The layer's non-trainable weights by name, as NumPy."""
    import keras

    return {v.name: keras.ops.convert_to_numpy(v) for v in layer.non_trainable_weights}
