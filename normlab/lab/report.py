"""Tables and plots from run directories (and nothing else).

:func:`write_report` walks a runs folder for finished runs (``summary.json``),
groups them by experiment and configuration, and writes per experiment:

- ``<experiment>.md`` -- a Markdown table: mean +- std and the 95% interval
  (t-distribution over seeds) of accuracy and loss, seconds per epoch, steps
  and parameter counts;
- ``<experiment>.csv`` and ``<experiment>.json`` -- the same numbers;
- ``<experiment>.png`` -- a bar chart with 95% error bars (comparisons) or
  accuracy against the swept value (sweeps; eval mode solid, train mode dashed);

plus ``report.md`` with every table. Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from normlab.lab.runner import CONFIG, SUMMARY

# Two-sided 95% quantiles of Student's t, t_{0.975, df}.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T975_TAIL = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table, 3 decimals)."""
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    for (d0, t0), (d1, t1) in zip(_T975_TAIL, _T975_TAIL[1:]):
        if d0 <= df <= d1:  # linear in 1/df
            w = (1 / d0 - 1 / df) / (1 / d0 - (0 if d1 == math.inf else 1 / d1))
            return t0 + w * (t1 - t0)
    return 1.960


def stats(values) -> dict:
    """n, mean, std (n-1) and the 95% half-width ``t * std / sqrt(n)`` (NaN when n < 2)."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": t975(n - 1) * std / math.sqrt(n)}


def load_runs(runs_dir: str | os.PathLike) -> tuple[list[dict], list[Path]]:
    """Finished run summaries (each with its ``run_dir``) and unfinished run directories."""
    finished, unfinished = [], []
    for config_path in sorted(Path(runs_dir).rglob(CONFIG)):
        run_dir = config_path.parent
        try:
            summary = json.loads((run_dir / SUMMARY).read_text())
        except (OSError, ValueError):
            unfinished.append(run_dir)
            continue
        finished.append({**summary, "run_dir": str(run_dir)})
    return finished, unfinished


def summarize(runs: list[dict]) -> dict[str, dict]:
    """``{experiment: {"meta": {...}, "rows": [...]}}``: one row per configuration."""
    groups: dict[str, dict[str, list[dict]]] = {}
    # Rows in grid order (runs finish out of order under a parallel executor); runs
    # written before `grid_index` existed come after, in the order they finished.
    def order(run):
        index = run.get("grid_index")
        return (index is None, index if index is not None else 0, run["finished_at"], run["run_dir"])

    for run in sorted(runs, key=order):
        c = run["config"]
        groups.setdefault(c["experiment"], {}).setdefault(c["label"], []).append(run)
    return {name: _summarize_experiment(by_label) for name, by_label in groups.items()}


def _summarize_experiment(by_label: dict[str, list[dict]]) -> dict:
    rows = []
    for label, runs in by_label.items():
        c = runs[0]["config"]
        row = dict(label=label, series=c["series"], x=c["x"], norms=c["norms"],
                   learning_rate=c["learning_rate"],
                   seeds=sorted(r["config"]["seed"] for r in runs), metric=runs[0]["metric"])
        for key in ("accuracy", "loss", "test_accuracy", "train_mode_accuracy", "train_mode_loss",
                    "seconds_per_epoch", "steps", "wall_time_s"):
            row[key] = stats(r[key] for r in runs)
        row["params_trainable"] = runs[0]["params"]["trainable"]
        row["params_non_trainable"] = runs[0]["params"]["non_trainable"]
        rows.append(row)
    configs = [r["config"] for runs in by_label.values() for r in runs]
    all_runs = [r for runs in by_label.values() for r in runs]
    constant = {k: configs[0][k] for k in ("dataset", "protocol", "arch", "epochs", "max_steps",
                                           "batch_size", "learning_rate", "train_subset")
                if all(c[k] == configs[0][k] for c in configs)}
    sweep = configs[0]["sweep"]
    if sweep:
        rows.sort(key=lambda r: (r["series"], -r["x"] if sweep == "batch size" else r["x"]))
    fixed = (f"optimizer steps ({configs[0]['max_steps']} per run)"
             if all(c["max_steps"] and c["max_steps"] == configs[0]["max_steps"] for c in configs)
             else f"epochs ({configs[0]['epochs']})" if "epochs" in constant else "")
    meta = dict(sweep=sweep, constant=constant, held_fixed=fixed,
                backends=sorted({r["backend"] for r in all_runs}),
                runs=len(all_runs), wall_time_s=sum(r["wall_time_s"] for r in all_runs),
                train_examples=sorted({r["train_examples"] for r in all_runs}),
                test_examples=sorted({r["test_examples"] for r in all_runs}))
    return {"meta": meta, "rows": rows}


def _pm(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["n"] == 0:
        return "-"
    if math.isnan(s["std"]):
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def _ci(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["n"] < 2:
        return "-"
    lo, hi = (s["mean"] - s["ci95"]) * scale, (s["mean"] + s["ci95"]) * scale
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def render_markdown(name: str, table: dict) -> str:
    """The Markdown section for one experiment."""
    meta, rows = table["meta"], table["rows"]
    metric = rows[0]["metric"] if rows else "test"
    sweep = meta["sweep"]
    has_train_mode = any(r["train_mode_accuracy"]["n"] for r in rows)
    lines = [f"### {name}", ""]
    settings = ", ".join(f"{k}={v}" for k, v in meta["constant"].items())
    lines.append(f"Settings: {settings}; backend {', '.join(meta['backends'])}; "
                 f"{meta['runs']} runs, {meta['wall_time_s'] / 60:.1f} min total; "
                 f"train/test examples {meta['train_examples']}/{meta['test_examples']}.")
    if sweep:
        lines.append(f"Held fixed across the sweep: {meta['held_fixed'] or 'nothing'}.")
    lines += ["", f"Accuracy and loss: {metric} split, mean ± std over seeds, "
              "95% interval from the t-distribution.", ""]
    head = ["config", "seeds", f"{metric} acc %", "95% CI", f"{metric} loss", "95% CI"]
    held_out = metric != "test"  # tutorial protocol: also show the unused split
    head += ["held-out acc %"] * held_out
    if has_train_mode:
        head += ["train-mode acc %", "95% CI"]
    varying_lr = "learning_rate" not in meta["constant"]
    head += ["lr"] * varying_lr + ["s/epoch", "steps", "params (trainable / non-trainable)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(len(r["seeds"])), _pm(r["accuracy"], 100), _ci(r["accuracy"], 100),
                 _pm(r["loss"], 1, 4), _ci(r["loss"], 1, 4)]
        cells += [_pm(r["test_accuracy"], 100)] * held_out
        if has_train_mode:
            cells += [_pm(r["train_mode_accuracy"], 100), _ci(r["train_mode_accuracy"], 100)]
        cells += [f"{r['learning_rate']:.3g}"] * varying_lr
        cells += [f"{r['seconds_per_epoch']['mean']:.1f}", f"{r['steps']['mean']:.0f}",
                  f"{r['params_trainable']:,} / {r['params_non_trainable']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    if held_out:
        lines += ["", f"The {metric} accuracy is the running average over the training epoch "
                  "(dropout on), as the tutorials reported; held-out: the split not trained on."]
    lines += ["", "s/epoch: mean wall time of one training epoch (the first includes compiling); "
              "steps: optimizer steps per run."]
    if has_train_mode:
        lines[-1] += (" Train-mode accuracy: the test set evaluated with training=True (batch "
                      "statistics over test batches of the training batch size), dropout off.")
    if not sweep:
        lines += ["", "Specs: " + "; ".join(f"{r['label']} = `{r['norms']}`" for r in rows) + "."]
    return "\n".join(lines) + "\n"


_CSV_STATS = ("accuracy", "loss", "test_accuracy", "train_mode_accuracy", "train_mode_loss", "seconds_per_epoch",
              "steps")


def write_csv(path: Path, table: dict) -> None:
    """One row per configuration; stats flattened to ``<metric>_{mean,std,ci95,n}``."""
    fields = ["label", "series", "x", "norms", "learning_rate", "seeds", "metric"]
    fields += [f"{k}_{s}" for k in _CSV_STATS for s in ("mean", "std", "ci95", "n")]
    fields += ["params_trainable", "params_non_trainable"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in table["rows"]:
            flat = {k: r[k] for k in ("label", "series", "x", "norms", "learning_rate", "metric",
                                      "params_trainable", "params_non_trainable")}
            flat["seeds"] = " ".join(map(str, r["seeds"]))
            flat.update({f"{k}_{s}": r[k][s] for k in _CSV_STATS for s in ("mean", "std", "ci95", "n")})
            writer.writerow(flat)


def plot(path: Path, name: str, table: dict) -> None:
    """Bar chart with 95% error bars (comparisons) or accuracy vs the swept value (sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, meta = table["rows"], table["meta"]
    metric = rows[0]["metric"]

    def err(s):
        return 0.0 if math.isnan(s["ci95"]) else s["ci95"] * 100

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if not meta["sweep"]:
        labels = [r["label"] for r in rows]
        means = [r["accuracy"]["mean"] * 100 for r in rows]
        bars = ax.bar(labels, means, yerr=[err(r["accuracy"]) for r in rows], capsize=4,
                      color="tab:blue", alpha=0.8)
        ax.bar_label(bars, [f"{m:.2f}" for m in means], label_type="center", color="white",
                     fontsize=9)
        low = min(m - err(r["accuracy"]) for m, r in zip(means, rows))
        high = max(m + err(r["accuracy"]) for m, r in zip(means, rows))
        ax.set_ylim(max(0.0, low - 2), min(100.0, high + 0.5))
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.tick_params(axis="x", labelrotation=15)
    else:
        for i, series in enumerate(dict.fromkeys(r["series"] for r in rows)):
            pts = [r for r in rows if r["series"] == series]
            xs = [r["x"] * 2 ** (0.04 * (i - 0.5)) for r in pts]  # nudge series apart
            color = f"C{i}"
            ax.errorbar(xs, [r["accuracy"]["mean"] * 100 for r in pts],
                        yerr=[err(r["accuracy"]) for r in pts], marker="o", capsize=3,
                        color=color, label=f"{series} (eval mode)")
            if any(r["train_mode_accuracy"]["n"] and abs(r["train_mode_accuracy"]["mean"]
                                                          - r["accuracy"]["mean"]) > 1e-9
                   for r in pts):  # batch-independent norms: train mode == eval mode
                ax.errorbar(xs, [r["train_mode_accuracy"]["mean"] * 100 for r in pts],
                            yerr=[err(r["train_mode_accuracy"]) for r in pts], marker="s",
                            capsize=3, linestyle="--", color=color,
                            label=f"{series} (train mode)")
        ax.set_xscale("log", base=2)
        xs = sorted({r["x"] for r in rows}, reverse=meta["sweep"] == "batch size")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        if meta["sweep"] == "batch size":
            ax.invert_xaxis()
        ax.set_xlabel(meta["sweep"])
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.legend(fontsize=8)
    seeds = max(len(r["seeds"]) for r in rows)
    const = meta["constant"]
    where = ", ".join([const["dataset"]] * ("dataset" in const)
                      + [f"{const['arch']} net"] * ("arch" in const)
                      + ["tutorial protocol"] * (const.get("protocol") == "tutorial"))
    ax.set_title(f"{name} ({where}; {', '.join(meta['backends'])}): mean of {seeds} seeds, "
                 "95% CI", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finite(obj):
    """``obj`` with NaN floats replaced by None, so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def write_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 experiments: list[str] | None = None) -> list[Path]:
    """Writes every experiment's tables and plot (see module docstring); returns the paths."""
    runs, unfinished = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(
            f"Invalid `runs_dir`: expected a folder with finished runs (<run>/{SUMMARY}). "
            f"Received: runs_dir='{runs_dir}' ({len(unfinished)} unfinished runs). "
            "Run `normlab compare` first, or pass the --out folder of a grid."
        )
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = summarize(runs)
    if experiments:
        tables = {k: v for k, v in tables.items() if k in experiments}
    written, sections = [], []
    for name, table in tables.items():
        markdown = render_markdown(name, table)
        sections.append(markdown + f"\n![{name}]({name}.png)\n")
        (out / f"{name}.md").write_text(markdown)
        (out / f"{name}.json").write_text(json.dumps(_finite(table), indent=2) + "\n")
        write_csv(out / f"{name}.csv", table)
        plot(out / f"{name}.png", name, table)
        written += [out / f"{name}{ext}" for ext in (".md", ".csv", ".json", ".png")]
    note = (f"\n{len(unfinished)} unfinished run(s) ignored: "
            + ", ".join(str(p) for p in unfinished) + "\n") if unfinished else ""
    (out / "report.md").write_text("# normlab lab report\n\n" + "\n".join(sections) + note)
    return written + [out / "report.md"]
