"""The report's plots: accuracy with intervals, and paired differences to the baseline.

Two panels per experiment, made with matplotlib's Agg backend (no display):

- left: each configuration's mean accuracy as a point with its 95% interval
  (t-distribution over seeds) and every seed as a small dot, on an axis fitted
  to the data (never bars cut off at an arbitrary floor). Sweeps draw accuracy
  against the swept value (eval mode solid, BatchNorm's train mode dashed);
  the swept axis is logarithmic when every value is positive. With
  ``--impl normlab,keras`` Keras' layers appear as hollow squares beside
  normlab's (in sweeps, hollow diamonds at the same swept value, in the
  series' color: hollow squares there are BatchNorm's train mode);
- right: each configuration's paired difference to its baseline (same seeds),
  with its 95% interval and a line at zero.

With one seed there is no interval: none is drawn and the title says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from normlab.lab import store
from normlab.lab.errors import require
from normlab.lab.experiments import IMPL_OWNERS


def _pyplot():
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _half(s: dict, scale: float = 100.0) -> float:
    return 0.0 if s["n"] < 2 or math.isnan(s["ci95"]) else s["ci95"] * scale


def title(name: str, table: dict) -> str:
    """The plot's title: experiment, dataset, backend, and how many seeds (or "no interval")."""
    meta, rows = table["meta"], table["rows"]
    const = meta["constant"]
    dataset = const.get("dataset", "")
    if dataset == "digits":
        dataset = "8x8 digits, not MNIST" + (" (MNIST unavailable)" if meta.get("dataset_fallback")
                                             else "")
    where = ", ".join([dataset] * bool(dataset) + [f"{const['arch']} net"] * ("arch" in const)
                      + ["tutorial protocol"] * (const.get("protocol") == "tutorial")
                      + [f"{meta['held_fixed']} held fixed"] * bool(meta["sweep"] and meta["held_fixed"]))
    seeds = sorted({len(r["seeds"]) for r in rows})
    if seeds == [1]:
        spread = "1 seed, no interval"
    else:
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        spread = f"mean of {count} seeds, 95% interval"
    return f"{name} ({where}; {', '.join(meta['backends'])}): {spread}"


def _limits(values: list[float], floor: float = 0.1,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """An axis range fitted to ``values`` (padded), within ``bounds`` (e.g. 0-100 %)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.15, floor)
    return max(lo - pad, bounds[0] - floor), min(hi + pad, bounds[1] + floor)


def plot(path: Path, name: str, table: dict) -> None:
    """Writes the two-panel PNG for one experiment (atomically)."""
    import io

    plt = _pyplot()
    fig = figure(name, table)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    store.write_text_atomic(path, buffer.getvalue())


def figure(name: str, table: dict):
    """The two-panel matplotlib figure for one experiment (see the module docstring)."""
    plt = _pyplot()
    rows, meta = table["rows"], table["meta"]
    metric = rows[0]["metric"]
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(10.5, 3.9), dpi=100,
                                 gridspec_kw={"width_ratios": [1.15, 1]})
    if meta["sweep"]:
        _sweep_panels(ax, dx, rows, table.get("other_rows", []), meta)
    else:
        _comparison_panels(ax, dx, rows, table.get("other_rows", []), meta)
    ax.set_ylabel(f"{metric} accuracy (%)")
    dx.set_ylabel("difference to baseline\n(percentage points, paired by seed)")
    dx.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
    for a in (ax, dx):
        a.grid(axis="y", alpha=0.3)
    fig.suptitle(title(name, table), fontsize=9)
    if not meta["sweep"]:
        fig.tight_layout()
        if max(tilt_tick_labels(a) for a in (ax, dx)) > 15:
            for note in dx.texts:  # "baseline" at crowded ticks: upright, below its zero
                note.set_rotation(90)
                note.xyann = (0, -6)
                note.set_verticalalignment("top")
    fig.tight_layout()
    return fig


ANGLES = (0, 15, 30, 45, 60, 75, 90)


def tilt_tick_labels(ax) -> float:
    """Tilts ``ax``'s x tick labels by the least angle of :data:`ANGLES` at which they do
    not overlap; returns it.

    Level labels fit when the widest is narrower than the ticks' spacing. Tilted by
    ``a`` degrees (right-aligned at their tick), neighbouring labels are parallel
    strips ``spacing * sin(a)`` apart, which must exceed 1.5 labels' height. Many long
    labels (e.g. "InstanceNorm (tensorflow)" for every backend) overlapped at a fixed 15.
    """
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    if len(labels) < 2:
        return 0.0
    renderer = ax.figure.canvas.get_renderer()
    for t in labels:
        t.set_rotation(0)
    sizes = [t.get_window_extent(renderer) for t in labels]
    width, height = max(b.width for b in sizes), max(b.height for b in sizes)
    ticks = sorted(ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0])
    spacing = min(b - a for a, b in zip(ticks, ticks[1:]))
    angle = next((a for a in ANGLES if (width * 1.1 < spacing if a == 0 else
                                        spacing * math.sin(math.radians(a)) > 1.5 * height)), 90)
    for t in labels:
        t.set_rotation(angle)
        t.set_horizontalalignment("right" if 0 < angle < 90 else "center")
        t.set_rotation_mode("anchor" if 0 < angle < 90 else "default")
    return angle


def _comparison_panels(ax, dx, rows, others, meta) -> None:
    labels = [r["label"] for r in rows]
    xs = list(range(len(rows)))
    shift = 0.15 if others else 0.0
    values = []
    for i, r in enumerate(rows):
        values += _point(ax, i - shift, r["accuracy"], r["per_seed"], "C0", "o", filled=True)
    for o in others:
        at = next((k for k, r in enumerate(rows) if _same_config(r, o)), None)
        if at is not None:
            values += _point(ax, at + shift, o["accuracy"], o["per_seed"], "C1", "s", filled=False)
    if others:
        main = meta.get("main_impl", "normlab")
        ax.plot([], [], "o", color="C0", label=_whose_layers(main))
        ax.plot([], [], "s", color="C1", markerfacecolor="white", label=_whose_layers(others[0]["impl"]))
        ax.legend(fontsize=8)
    ax.set_ylim(*_limits(values, bounds=(0.0, 100.0)))
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    diffs = []
    for i, r in enumerate(rows):
        d = r.get("paired")
        if d and d["n"]:
            diffs += _diff(dx, i, d, "C0")
        elif r.get("is_baseline", d is None):
            dx.annotate("baseline", (i, 0.0), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7, color="0.3")
    dx.set_ylim(*_limits(diffs + [0.0]))
    dx.set_xticks(xs, labels, fontsize=8)
    dx.set_xlim(-0.6, len(rows) - 0.4)
    dx.set_title(f"vs {meta.get('baseline', '')}", fontsize=8)


def _point(ax, x, s, per_seed, color, marker, filled) -> list[float]:
    seeds = [100 * v for v in per_seed.values() if v is not None]
    ax.plot([x + 0.08] * len(seeds), seeds, ".", color=color, alpha=0.4, markersize=4)  # each seed
    half = _half(s)
    face = color if filled else "white"
    if half:
        ax.errorbar([x], [100 * s["mean"]], yerr=[half], fmt=marker, color=color, capsize=4,
                    markerfacecolor=face)
    else:
        ax.plot([x], [100 * s["mean"]], marker, color=color, markerfacecolor=face)
    return seeds + [100 * s["mean"] - half, 100 * s["mean"] + half]


def _diff(dx, x, d, color) -> list[float]:
    per = [100 * v for v in d["diffs"]]
    dx.plot([x + 0.08] * len(per), per, ".", color=color, alpha=0.4, markersize=4)  # each seed
    mean = 100 * d["mean"]
    if d["n"] >= 2 and not math.isnan(d["ci95"]):
        # Cut at +-100 points, the range of a difference of accuracies, as the table's cell is.
        low, high = max(100 * d["low"], -100.0), min(100 * d["high"], 100.0)
        dx.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color=color, capsize=4)
        return per + [low, high]
    dx.plot([x], [mean], "o", color=color)
    return per + [mean]


def _same_config(row: dict, other: dict) -> bool:
    """Whether ``other`` (another implementation's row) runs ``row``'s configuration."""
    keys = ("series", "x", "norms", "backend", "settings")
    return all(row.get(k) == other.get(k) for k in keys)


def _legend_other(ax, others) -> None:
    ax.plot([], [], "D", color="0.3", markerfacecolor="white", label=_whose_layers(others[0]["impl"]))


def _whose_layers(impl: str) -> str:
    """The legend's name for ``impl``'s runs ("Keras' layers")."""
    return f"{IMPL_OWNERS[impl]} layers" if impl in IMPL_OWNERS else impl


def _sweep_panels(ax, dx, rows, others, meta) -> None:
    series = list(dict.fromkeys(r["series"] for r in rows))
    log = all(r["x"] > 0 for r in rows)
    values, diffs = [], []
    for i, name in enumerate(series):
        pts = [r for r in rows if r["series"] == name]
        nudge = (lambda x: x * 2 ** (0.04 * (i - 0.5))) if log else (lambda x: x + 0.05 * (i - 0.5))
        xs = [nudge(r["x"]) for r in pts]
        color = f"C{i}"
        for r, x in zip(pts, xs):
            values += _point(ax, x, r["accuracy"], r["per_seed"], color, "o", filled=True)
        ax.plot(xs, [100 * r["accuracy"]["mean"] for r in pts], "-", color=color,
                label=f"{name} (eval mode)")
        for r, x in zip(pts, xs):  # the other implementation's run of the same point
            for o in (o for o in others if _same_config(r, o)):
                values += _point(ax, x, o["accuracy"], o["per_seed"], color, "D", filled=False)
        train_mode = [r for r in pts if r["train_mode_accuracy"]["n"] and abs(
            r["train_mode_accuracy"]["mean"] - r["accuracy"]["mean"]) > 1e-9]
        if train_mode:  # batch-independent norms: train mode == eval mode, not drawn twice
            t = [100 * r["train_mode_accuracy"]["mean"] for r in pts]
            ax.errorbar(xs, t, yerr=[_half(r["train_mode_accuracy"]) for r in pts], marker="s",
                        capsize=3, linestyle="--", color=color, markerfacecolor="white",
                        label=f"{name} (train mode)")
            values += t
        for r, x in zip(pts, xs):
            if r.get("paired") and r["paired"]["n"]:
                diffs += _diff(dx, x, r["paired"], color)
        if any(r.get("paired") for r in pts):
            dx.plot(xs, [100 * r["paired"]["mean"] if r.get("paired") else math.nan for r in pts],
                    "-", color=color, alpha=0.5, label=name)
    ax.set_ylim(*_limits(values, bounds=(0.0, 100.0)))
    xs = sorted({r["x"] for r in rows}, reverse=meta["sweep"] == "batch size")
    for a in (ax, dx):
        if log:
            a.set_xscale("log", base=2)
        a.set_xticks(xs, [f"{x:g}" for x in xs])
        a.minorticks_off()
        if meta["sweep"] == "batch size":
            a.invert_xaxis()
        a.set_xlabel(meta["sweep"])
    dx.set_xlim(ax.get_xlim())  # (the baseline has no difference: alone, the last point sat on the edge)
    if others:
        _legend_other(ax, others)
    ax.legend(fontsize=7)
    dx.set_ylim(*_limits(diffs + [0.0]))
    dx.set_title(f"vs {meta.get('baseline', '')}", fontsize=8)
