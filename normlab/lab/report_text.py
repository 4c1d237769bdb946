"""The Markdown of one experiment's report section and its CSV (see :mod:`normlab.lab.report`).

Pure formatting of the tables :func:`normlab.lab.report.summarize` makes.
"""

from __future__ import annotations

import csv
import io
import math
import re

from normlab.lab.experiments import IMPL_OWNERS


def _pm(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["n"] == 0:
        return "-"
    if math.isnan(s["std"]):
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def _ci(s: dict, scale: float = 1.0, digits: int = 2, bounds: tuple[float, float] | None = None) -> str:
    """The 95% interval; an accuracy's is cut at its possible range (``bounds``), marked ``*``."""
    if s["n"] < 2:
        return "-"
    lo, hi = (s["mean"] - s["ci95"]) * scale, (s["mean"] + s["ci95"]) * scale
    cut = False
    if bounds is not None and (lo < bounds[0] or hi > bounds[1]):
        cut, lo, hi = True, max(lo, bounds[0]), min(hi, bounds[1])
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]" + "*" * cut


def _points(d: dict, digits: int = 2) -> str:
    if d["n"] == 0:
        return "-"
    head = f"{100 * d['mean']:+.{digits}f}"
    if d["n"] >= 2 and math.isnan(d["low"]):
        return f"{head} on every seed"  # no spread: no t interval (stats.paired)
    if d["n"] < 2:
        return head
    lo, hi = 100 * d["low"], 100 * d["high"]
    cut = lo < -100.0 or hi > 100.0  # a difference of accuracies is within +-100 points
    lo, hi = max(lo, -100.0), min(hi, 100.0)
    return f"{head} [{lo:+.{digits}f}, {hi:+.{digits}f}]" + "*" * cut


def _p(d: dict) -> str:
    """The p-value as a table cell ("0.013", "< 0.001"); with "= " in prose."""
    return "-" if math.isnan(d["p"]) else ("< 0.001" if d["p"] < 0.001 else f"{d['p']:.3f}")


def dataset_line(meta: dict) -> str:
    """The report's dataset banner, or "" for the usual datasets."""
    dataset = meta["constant"].get("dataset")
    if meta.get("dataset_fallback"):
        return (f"**Dataset: scikit-learn's bundled 8x8 digits, not MNIST.** MNIST was not "
                f"available when this ran ({meta['dataset_fallback']}).")
    if dataset == "digits":
        return "**Dataset: scikit-learn's bundled 8x8 digits, not MNIST.**"
    return ""


def render(name: str, table: dict) -> str:
    """Settings, the per-configuration table, paired differences and the A/B table."""
    meta, rows = table["meta"], table["rows"]
    metric = rows[0]["metric"] if rows else "test"
    lines = [f"### {name}", ""]
    banner = dataset_line(meta)
    if banner:
        lines += [banner, ""]
    settings = ", ".join(f"{k}={v}" for k, v in meta["constant"].items())
    impls = " and ".join(meta.get("impls", ["normlab"]))
    examples = "/".join(", ".join(map(str, meta[k])) for k in ("train_examples", "test_examples"))
    lines.append(f"Settings: {settings}; backend {', '.join(meta['backends'])}; layers: {impls}; "
                 f"{meta['runs']} run{'s' * (meta['runs'] != 1)}, {meta['wall_time_s'] / 60:.1f} min total; "
                 f"train/test examples {examples}.")
    if meta["sweep"]:
        lines.append(f"Held fixed across the sweep: {meta['held_fixed'] or 'nothing'}.")
    lines += ["", *_main_table(rows, meta, metric)]
    lines += _paired_section(rows, meta)
    lines += _ab_section(table.get("ab", []), meta)
    if not meta["sweep"]:
        lines += ["", "Specs: " + "; ".join(f"{r['label']} = `{r['norms']}`" for r in rows) + "."]
    for note in meta.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += _left_out(rows, meta)
    return "\n".join(lines) + "\n"


def _main_table(rows: list[dict], meta: dict, metric: str) -> list[str]:
    seeds = max((len(r["seeds"]) for r in rows), default=0)
    spread = ("one seed: no spread or interval" if seeds == 1 else
              "mean ± std over seeds, 95% interval from the t-distribution")
    lines = [f"Accuracy and loss: {metric} split, {spread}.", ""]
    has_train_mode = any(r["train_mode_accuracy"]["n"] for r in rows)
    head = ["config", "seeds", f"{metric} acc %", "95% CI", f"{metric} loss", "95% CI"]
    held_out = metric != "test"  # tutorial protocol: also show the unused split
    head += ["held-out acc %"] * held_out
    if has_train_mode:
        head += ["train-mode acc %", "95% CI"]
    varying_lr = "learning_rate" not in meta["constant"]
    head += ["lr"] * varying_lr + ["s/epoch", "steps", "params (trainable / non-trainable)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(len(r["seeds"])), _pm(r["accuracy"], 100) + _of(r, "accuracy"),
                 _ci(r["accuracy"], 100, bounds=(0.0, 100.0)), _pm(r["loss"], 1, 4) + _of(r, "loss"),
                 _ci(r["loss"], 1, 4, bounds=(0.0, math.inf))]
        cells += [_pm(r["test_accuracy"], 100)] * held_out
        if has_train_mode:
            cells += [_pm(r["train_mode_accuracy"], 100), _ci(r["train_mode_accuracy"], 100, bounds=(0.0, 100.0))]
        cells += [f"{r['learning_rate']:.3g}"] * varying_lr
        cells += [f"{r['seconds_per_epoch']['mean']:.1f}", f"{r['steps']['mean']:.0f}",
                  f"{r['params_trainable']:,} / {r['params_non_trainable']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    if held_out:
        lines += ["", f"The {metric} accuracy is the running average over the training epoch "
                  "(dropout on), as the tutorials reported; held-out: the split not trained on."]
    lines += ["", "s/epoch: mean wall time of one training epoch (the first includes compiling); "
              "steps: optimizer steps per run."]
    if any("]*" in line for line in lines):
        lines[-1] += (" *: the interval cut at the value's possible range (accuracy 0-100%, loss at least 0; "
                      "few seeds and a wide spread); the CSV and JSON keep the t interval's half-width.")
    if has_train_mode:
        lines[-1] += (" Train-mode accuracy: the test set evaluated with training=True (batch "
                      "statistics over test batches of the training batch size), dropout off.")
    counts = sorted({len(r["seeds"]) for r in rows})
    if len(counts) > 1:
        short = [r["label"] for r in rows if len(r["seeds"]) < counts[-1]]
        lines += ["", f"Unequal seeds ({', '.join(map(str, counts))}): {', '.join(short)} "
                  f"{'has' if len(short) == 1 else 'have'} fewer finished runs than the others: an "
                  "interrupted grid (running its command again finishes it), or grids run with other --seeds."]
    return lines


def _of(row: dict, key: str) -> str:
    """`` (n=2)`` where a diverged run left ``key`` out of the row's mean."""
    n = row[key]["n"]
    return f" (n={n})" if 0 < n < len(row["seeds"]) else ""


def _paired_section(rows: list[dict], meta: dict) -> list[str]:
    compared = [r for r in rows if r.get("paired")]
    unpaired = [r["label"] for r in rows if not r.get("paired") and not r.get("is_baseline")]
    note = (["", "Not paired (no baseline run on the same backend with the same settings): "
             + ", ".join(unpaired) + "."] if unpaired else [])
    if not compared:
        return note
    lines = ["", f"#### Paired differences against {meta['baseline']}", "",
             "Runs with the same seed see the same batches in the same order with the same "
             "dropout masks (and start from the same convolution and dense weights where the "
             "layers agree), so each configuration is compared with its baseline seed by seed: "
             "the mean of the per-seed accuracy differences (percentage points), its 95% "
             "interval (t-distribution) and the paired t-test's p-value (the differences' spread "
             "taken as at least that of rounding to whole examples, so that equal differences "
             "on every seed get an interval too).", "",
             "| config | baseline | seeds | difference (points) [95% CI] | p | verdict |",
             "|---|---|---|---|---|---|"]
    for r in compared:
        d = r["paired"]
        lines.append(f"| {r['label']} | {d['baseline']} | {d['n']} | {_points(d)} | {_p(d)} "
                     f"| {d['verdict']} |")
    cut_note = _cut_note(lines[-len(compared):])
    return lines + ["", verdict_sentence(compared, meta)] + cut_note + note


def verdict_sentence(compared: list[dict], meta: dict) -> str:
    """Says plainly which differences are beyond the seed noise, if any; comparisons
    with fewer than two shared seeds have no interval and are named apart."""
    rated = [r for r in compared if r["paired"]["n"] >= 2]
    few = [r["label"] for r in compared if r["paired"]["n"] < 2]
    if not rated:
        if all(r["paired"]["verdict"] == "no common seeds" for r in compared):
            return ("No configuration shares a seed with its baseline, so none can be compared "
                    "seed by seed.")
        if all(r["paired"]["n"] == 0 for r in compared):
            return ("No configuration can be compared seed by seed with its baseline: on every "
                    "shared seed one of the two runs diverged (listed below), or no seed is shared.")
        return ("With at most one shared seed per comparison there is no interval: the differences "
                "are single runs and cannot be told apart from seed-to-seed noise.")
    aside = (f" No interval (fewer than two shared seeds where both runs finished): {', '.join(few)}."
             if few else "")
    same = [r for r in rated if math.isnan(r["paired"]["low"])]
    if same:
        aside += (" The same difference on every seed (no interval; p from the exact sign-flip "
                  "test, which needs 6 seeds to go below 0.05): "
                  + ", ".join(r["label"] for r in same) + ".")
    beyond = [r for r in rated if r["paired"]["verdict"] in ("higher", "lower")]
    if not beyond:
        every = ("" if len(same) == len(rated) else
                 "Every paired 95% interval includes 0: " if len(same) + len(few) == 0 else
                 "Every other paired 95% interval includes 0: ")
        return (f"{every}{'n' if every else 'N'}o configuration differs from its "
                "baseline beyond the seed-to-seed noise, so the ranking of the means is "
                "within noise." + aside)
    parts = [f"{r['label']} {r['paired']['verdict']} by {abs(100 * r['paired']['mean']):.2f} "
             f"points (p {'' if _p(r['paired']).startswith('<') else '= '}{_p(r['paired'])})"
             for r in beyond]
    rest = len(rated) - len(beyond)
    how = "interval excluding 0" + (", or p < 0.05" if any(r in same for r in beyond) else "")
    return (f"Beyond the seed noise ({how}): {'; '.join(parts)}. "
            + ("The other difference is within noise. " if rest == 1 else
               f"The other {rest} differences are within noise. " if rest else "")
            + "The p-values are not corrected for multiple comparisons." + aside)


_LISTED = 20  # ignored runs named in a report; the rest are counted


def _left_out(rows: list[dict], meta: dict) -> list[str]:
    """Notes on diverged runs and on runs the report ignored."""
    lines = []
    diverged = [f"{r['label']} seed {seed} ({', '.join(fields)})"
                for r in rows for seed, fields in sorted(r.get("diverged", {}).items())]
    if diverged:
        lines += ["", "Diverged (non-finite values, stored as null and left out of their "
                  "column's mean and interval): " + "; ".join(diverged) + "."]
    ignored = meta.get("ignored", [])
    if ignored:
        lines += ["", f"Ignored: {len(ignored)} run(s), not summarized above:", ""]
        lines += [f"- {i['run_dir']}: {i['reason']}" for i in ignored[:_LISTED]]
        lines += [f"- and {len(ignored) - _LISTED} more"] * (len(ignored) > _LISTED)
    return lines


def unused_note(run_dirs: list[tuple[object, str]]) -> str:
    """The report's closing note on the runs it could not use, ``(run directory, why)`` each:
    unfinished or unreadable ones (``why`` empty) by path, then the finished runs whose files
    disagree (:mod:`normlab.lab.consistency`) with the reason; "" for none.

    Example:
        >>> from normlab.lab.report_text import unused_note
        >>> print(unused_note([("runs/c/GN/v/seed0", ""), ("runs/c/GN/v/seed1", "config.json differs ...")]))
        <BLANKLINE>
        2 unfinished or unreadable run(s) ignored: runs/c/GN/v/seed0, runs/c/GN/v/seed1
        <BLANKLINE>
        Of these, 1 finished with files that disagree (copied from another run's folder, ...):
        <BLANKLINE>
        - runs/c/GN/v/seed1: config.json differs ...
        <BLANKLINE>
    """
    if not run_dirs:
        return ""
    lines = ["", f"{len(run_dirs)} unfinished or unreadable run(s) ignored: "
             + ", ".join(str(path) for path, _ in run_dirs)]
    disagree = [(path, why) for path, why in run_dirs if why]
    if disagree:
        lines += ["", f"Of these, {len(disagree)} finished with files that disagree (copied from another "
                  "run's folder, or edited by hand; delete such a run's directory and rerun its command "
                  "to redo it):", ""]
        lines += [f"- {path}: {why}" for path, why in disagree[:_LISTED]]
        lines += [f"- and {len(disagree) - _LISTED} more"] * (len(disagree) > _LISTED)
    return "\n".join(lines) + "\n"


def _cut_note(rows: list[str]) -> list[str]:
    """The note on table rows with a difference's interval cut at +-100 points (marked ``*``)."""
    if not any("]* |" in row for row in rows):
        return []
    return ["", "*: the interval cut at +-100 points, the range of a difference of accuracies "
            "(few seeds and a wide spread)."]


def _ab_section(ab: list[dict], meta: dict) -> list[str]:
    if not ab:
        return []
    main, other = ab[0]["main_impl"], ab[0]["impl"]
    whose = IMPL_OWNERS
    lines = ["", f"#### {main} against Keras' built-in layers" if other == "keras" else
             f"#### {main} against {other}", "",
             f"The same runs (same seeds, same data order, same arguments) with "
             f"{whose.get(other, other)} layer for each norm instead of {whose.get(main, main)}; "
             f"differences are {other} minus {main}, seed by seed.", "",
             f"| config | seeds | {main} acc % | {other} acc % | difference (points) [95% CI] "
             f"| per seed (seed: points) | runs equal to 4 decimals | s/epoch {main} / {other} |",
             "|---|---|---|---|---|---|---|---|"]
    for a in ab:
        d = a["diff"]
        per_seed = ", ".join(f"{s}: {100 * v:+.2f}" for s, v in zip(d["seeds"], d["diffs"])) or "-"
        lines.append(
            f"| {a['label']} | {d['n']} | {_pm(a['main'], 100)} | {_pm(a['other'], 100)} "
            f"| {_points(d)} | {per_seed} | {a['identical_4dp']} of {d['n']} "
            f"| {a['seconds_main']['mean']:.1f} / {a['seconds_other']['mean']:.1f} |")
    runs = sum(a["diff"]["n"] for a in ab)
    same = sum(a["identical_4dp"] for a in ab)
    gap = max((abs(a["diff"]["mean"]) for a in ab if a["diff"]["n"]), default=0.0)
    noisy = [a["label"] for a in ab if a["diff"]["verdict"] in ("higher", "lower")]
    agree = ("is the same" if gap == 0 else
             f"agrees within {gap:.4f} ({100 * gap:.2f} points)")
    lines += ["", f"Accuracies equal to the 4th decimal in {same} of {runs} runs; every "
              f"configuration's mean {agree}"
              + (f"; beyond seed noise: {', '.join(noisy)}." if noisy else
                 ", and no difference is beyond the seed noise.")]
    if any(a["params_main"] != a["params_other"] for a in ab):
        lines[-1] += " (Parameter counts differ for: " + ", ".join(
            a["label"] for a in ab if a["params_main"] != a["params_other"]) + ".)"
    return lines + _cut_note(lines)


def plain(markdown: str) -> str:
    """``markdown`` for a terminal: no emphasis, code or heading marks, no image links.

    Tables stay as they are (pipes line up well enough to read); headings are
    underlined instead of prefixed with ``#``.

    Example:
        >>> from normlab.lab.report_text import plain
        >>> print(plain("### c\\n\\n**Dataset: digits.** Specs: BN = `batch`.\\n![c](c.png)\\n"))
        c
        =
        <BLANKLINE>
        Dataset: digits. Specs: BN = batch.
        <BLANKLINE>
    """
    lines = []
    for line in markdown.splitlines():
        if re.fullmatch(r"!\[[^]]*\]\([^)]*\)", line.strip()):
            continue
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        line = re.sub(r"`([^`]*)`", r"\1", line)
        heading = re.fullmatch(r"(#+) (.*)", line)
        if heading:
            text = heading.group(2)
            lines += [text, ("=" if len(heading.group(1)) <= 3 else "-") * len(text)]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


_CSV_STATS = ("accuracy", "loss", "test_accuracy", "train_mode_accuracy", "train_mode_loss",
              "seconds_per_epoch", "steps")


def render_csv(table: dict) -> str:
    """One row per configuration (every implementation); stats as ``<metric>_{mean,std,ci95,n}``."""
    fields = ["label", "impl", "backend", "series", "x", "norms", "learning_rate", "seeds", "metric"]
    fields += [f"{k}_{s}" for k in _CSV_STATS for s in ("mean", "std", "ci95", "n")]
    fields += ["paired_baseline", "paired_diff_mean", "paired_diff_low", "paired_diff_high",
               "paired_p", "paired_verdict", "params_trainable", "params_non_trainable"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in table["rows"] + table.get("other_rows", []):
        flat = {k: r[k] for k in ("label", "impl", "backend", "series", "x", "norms",
                                  "learning_rate", "metric", "params_trainable",
                                  "params_non_trainable")}
        flat["seeds"] = " ".join(map(str, r["seeds"]))
        flat.update({f"{k}_{s}": r[k][s] for k in _CSV_STATS for s in ("mean", "std", "ci95", "n")})
        d = r.get("paired")
        if d:
            flat.update(paired_baseline=d["baseline"], paired_diff_mean=d["mean"],
                        paired_diff_low=d["low"], paired_diff_high=d["high"], paired_p=d["p"],
                        paired_verdict=d["verdict"])
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in flat.items()})
    return buffer.getvalue()
