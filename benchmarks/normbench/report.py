"""The printed tables and the performance targets (pure: no framework imported)."""

from __future__ import annotations

import math

from .machine import load_text
from .stats import IMPLS, decide, format_ratio


def _cell(cell, width):
    """``median/min`` ms of one implementation, ``—`` where it was not timed."""
    if not cell:
        return f"{'—':>{width}}"
    return f"{cell['ms']:.2f}/{cell.get('min_ms', cell['ms']):.2f}".rjust(width)


def print_table(result):
    roof = result["roofline"]
    print(f"\n=== {result['backend']}  (copy roofline: "
          + ", ".join(f"{k} {v:.1f}" for k, v in roof.items()) + ")")
    print("    threads: " + ", ".join(f"{k} {v}" for k, v in result.get("threads", {}).items()))
    print(f"    load: before {load_text(result.get('load_before'))}; after {load_text(result.get('load_after'))}")
    rounds = next((row["normlab"]["rounds"] for row in result["rows"] if "normlab" in row), None)
    print(f"    times: median/min ms over {rounds} interleaved rounds; ratios: median of the per-round "
          "ratios ± half their IQR, 'undecided' where the IQR is too wide")
    samples = sum(row[s].get("rounds", 0) for row in result["rows"] for s in IMPLS if s in row)
    hit = sum(row[s].get("preempted_rounds", 0) for row in result["rows"] for s in IMPLS if s in row)
    if samples:
        print(f"    samples during which the process was preempted (another task took its CPU): "
              f"{hit} of {samples} ({100 * hit / samples:.0f}%)")
    header = (f"{'op':17} {'shape':17} {'pass':8} {'mode':16} {'normlab ms':>13} {'GB/s':>5} {'roof':>5} "
              f"{'general ms':>13} {'keras ms':>13} {'native ms':>13} {'floor ms':>13} {'x keras':>10} "
              f"{'max x':>10} {'/native':>10}  native op")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        n = row.get("normlab")
        ratios = row.get("ratios", {})
        gbs = f"{n['GB/s']:.1f}" if n else "—"
        frac = f"{n['roofline']:.2f}" if n and "roofline" in n else "—"
        print(f"{row['op']:17} {str(tuple(row['shape'])):17} {row['pass']:8} {row['mode']:16} "
              f"{_cell(n, 13)} {gbs:>5} {frac:>5} "
              f"{_cell(row.get('general'), 13)} {_cell(row.get('keras'), 13)} {_cell(row.get('native'), 13)} "
              f"{_cell(row.get('floor'), 13)} {format_ratio(ratios.get('speedup_vs_keras'), 10)} "
              f"{format_ratio(ratios.get('keras_over_floor'), 10)} {format_ratio(ratios.get('normlab_over_native'), 10)}"
              f"  {row.get('native', {}).get('name', '—')}")
    if any("work" in row for row in result["rows"]):
        print_work(result)
    if result.get("e2e"):
        e = result["e2e"][0]
        print(f"\n  end-to-end: classic CNN, one epoch, batch 32, {e['images']} {e['data']} images; median of "
              f"{len(e['epochs_seconds'])} interleaved epochs")
        for row in result["e2e"]:
            print(f"    {row['norm']:32} {row['seconds']:7.2f} s   loss {row['loss']:.3f}  acc {row['accuracy']:.3f}")
    if result.get("applications"):
        print("\n  keras.applications.MobileNetV2 (alpha 0.5, 96x96x3, batch 32), Keras' batch norms and "
              "normlab.compat.keras_layers.convert's: median training step of interleaved rounds")
        for row in result["applications"]:
            print(f"    {row['model']:32} {row['step_seconds'] * 1e3:7.1f} ms")


def format_work(w):
    """``12 ops 7.1x`` (kernels, bytes moved over the input's bytes; a range where branches differ)."""
    if not w:
        return "—"
    if "error" in w:
        return "n/a"
    lo, hi = w["bytes_per_input"], w["bytes_max_per_input"]
    return f"{w['ops']} ops {lo:.1f}x" + (f"-{hi:.1f}x" if hi > lo * 1.0001 else "")


def print_work(result):
    print("\n    work per call (counted, load-independent): kernels run and bytes read + written "
          "over the input's size; 'a-b' where a conditional's branches differ")
    header = f"    {'op':17} {'shape':17} {'pass':8} {'mode':16} " + " ".join(f"{s:>20}" for s in IMPLS)
    print(header)
    for row in result["rows"]:
        w = row.get("work", {})
        print(f"    {row['op']:17} {str(tuple(row['shape'])):17} {row['pass']:8} {row['mode']:16} "
              + " ".join(f"{format_work(w.get(s)):>20}" for s in IMPLS))


def _speedup(row, key="speedup_vs_keras"):
    """``1.53x (IQR 1.49-1.60)``, with the bound the floor sets (Keras' time over the floor's)."""
    s = row.get("ratios", {}).get(key)
    if not s or s["median"] is None:
        return "n/a"
    text = f"{s['median']:.2f}x (IQR {s['q25']:.2f}-{s['q75']:.2f}, {s['rounds']} rounds)"
    bound = row.get("ratios", {}).get("keras_over_floor")
    if key == "speedup_vs_keras" and bound and bound["median"] is not None:
        text += f" (floor reference: Keras/floor {format_ratio(bound).strip()})"
    return text


#: Rows of fewer elements time the frameworks' per-op dispatch: shown, but not held to the targets.
SMALL_ELEMENTS = 1 << 16


def targets(results):
    """The performance issue's targets on the measured rows (its shapes, not the small
    ones): ``(what, met|missed|undecided, value)``."""
    checks = []

    def rows(backend, op, pass_, shape=None):
        for row in results.get(backend, {}).get("rows", []):
            if row["op"] == op and row["pass"] == pass_ and (shape is None or tuple(row["shape"]) == shape) \
                    and math.prod(row["shape"]) >= SMALL_ELEMENTS and row.get("targeted", True):
                yield row

    def ratio(row, key):
        return row.get("ratios", {}).get(key)

    for backend in results:
        need = 5.0 if backend == "torch" else 2.0
        for op in ("GroupNorm(32)", "InstanceNorm"):
            for row in rows(backend, op, "fwd+bwd"):
                checks.append((f"{backend} {row['mode']} {op} {tuple(row['shape'])} fwd+bwd >= {need:g}x Keras",
                               decide(ratio(row, "speedup_vs_keras"), need), _speedup(row)))
        for op in ("LayerNorm(-1)", "BatchNorm(train)"):
            composes = not (backend == "torch" and op == "LayerNorm(-1)")  # Keras calls F.layer_norm there
            need_ln = 1.5 if composes else 1.0
            for pass_ in ("fwd", "fwd+bwd"):
                for row in rows(backend, op, pass_):
                    checks.append((f"{backend} {row['mode']} {op} {pass_} >= {need_ln:g}x Keras",
                                   decide(ratio(row, "speedup_vs_keras"), need_ln), _speedup(row)))
        for row in rows(backend, "GroupNorm(32)", "fwd", shape=(8, 56, 56, 256)):
            r = row.get("normlab", {}).get("roofline")
            f = row.get("floor", {}).get("roofline")
            status = "undecided" if r is None else "met" if r >= 0.5 else "missed"
            checks.append((f"{backend} {row['mode']} GroupNorm(32) (8,56,56,256) fwd >= 0.5 of copy roofline",
                           status, (f"{r:.2f}" if r else "n/a") + (f" (floor: {f:.2f})" if f else "")))
        if backend == "torch":
            for op in ("GroupNorm(32)", "InstanceNorm"):
                for row in rows(backend, op, "fwd"):
                    checks.append((f"torch {op} {tuple(row['shape'])} fwd (NHWC) within 1.25x of F.group_norm NCHW",
                                   decide(ratio(row, "normlab_over_native"), 1.25, higher_is_better=False),
                                   _speedup(row, "normlab_over_native")))
        e2e = {r["norm"]: r for r in results[backend].get("e2e", [])}
        for kind in ("GroupNormalization(5)", "BatchNormalization"):
            a, b = e2e.get(f"normlab {kind}"), e2e.get(f"keras {kind}")
            if a and b:
                status, ratios = e2e_decision(a["epochs_seconds"], b["epochs_seconds"])
                checks.append((f"{backend} end-to-end epoch with {kind} no slower than Keras", status,
                               f"{a['seconds']:.2f} s vs {b['seconds']:.2f} s (median epochs; per-round "
                               f"normlab/Keras {', '.join(f'{r:.2f}' for r in ratios)})"))
        apps = {r["model"].split()[0]: r for r in results[backend].get("applications", [])}
        if "normlab" in apps and "keras" in apps:
            a, b = apps["normlab"], apps["keras"]
            status, ratios = e2e_decision(a["rounds_seconds"], b["rounds_seconds"])
            checks.append((f"{backend} MobileNetV2 training step converted to normlab no slower than Keras", status,
                           f"{a['step_seconds'] * 1e3:.1f} ms vs {b['step_seconds'] * 1e3:.1f} ms (per-round "
                           f"normlab/Keras {', '.join(f'{r:.2f}' for r in ratios)})"))
    return checks


def e2e_decision(normlab_epochs, keras_epochs, min_rounds=3):
    """``met`` where normlab's epoch was no slower than Keras' in every interleaved round,
    ``missed`` where it was slower in every one, else (or under ``min_rounds``) ``undecided``."""
    ratios = [a / b for a, b in zip(normlab_epochs, keras_epochs)]
    if len(ratios) < min_rounds:
        return "undecided", ratios
    return ("met" if all(r <= 1 for r in ratios) else "missed" if all(r > 1 for r in ratios)
            else "undecided"), ratios
