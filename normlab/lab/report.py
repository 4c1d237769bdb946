"""Tables and plots from run directories (and nothing else; no deep-learning framework).

:func:`write_report` walks a runs folder for finished runs (``summary.json``),
groups them by experiment and configuration, and writes per experiment:

- ``<experiment>.md`` -- Markdown tables: per configuration the mean ± std and
  95% interval (t-distribution over seeds) of accuracy and loss, seconds per
  epoch, steps and parameter counts; each configuration's paired difference to
  the baseline (same seeds: same initial weights and data order) with its 95%
  interval and paired t-test, and whether the ranking is within noise; and,
  when the grid ran with ``--impl normlab,keras``, normlab against Keras' own
  layers seed by seed;
- ``<experiment>.csv`` and ``<experiment>.json`` -- the same numbers (standard JSON);
  the CSV's ``seeds``: the seed ids, space-separated (the Markdown's: a count); ``<metric>_n``: seeds per mean;
- ``<experiment>.png`` -- accuracy as points with 95% intervals and the paired
  differences (:mod:`normlab.lab.plots`);

plus ``report.md`` with every table. Every file is written atomically.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
from pathlib import Path

from normlab.lab import store
from normlab.lab.errors import FOLDER, ConfigError, LabError, empty_value
from normlab.lab.models import find_label, is_identity, split_placement
from normlab.lab.presets import notes_for
from normlab.lab.report_text import render as render_markdown  # noqa: F401 - re-exported
from normlab.lab.report_text import render_csv, unused_note
from normlab.lab.stats import paired, stats, t975  # noqa: F401 - t975 is part of the API
from normlab.lab.store import load_runs  # noqa: F401 - re-exported

_STATS = ("accuracy", "loss", "test_accuracy", "train_mode_accuracy", "train_mode_loss",
          "seconds_per_epoch", "steps", "wall_time_s")
FALLBACK = "dataset_fallback"  # the notes key of a run that replaced MNIST by digits


class ReportError(LabError, FileNotFoundError):
    """No finished runs where the report was asked for."""


def check_baseline(baseline: str | None, names: set[str]) -> str | None:
    """The configuration (label) or sweep series of the grid that ``baseline`` names, as written
    there or as a ``--norms`` placement written another way (``'group( groups=5 )'``); raises for none."""
    found = None if baseline is None else find_label(baseline, names)
    if found is None and baseline is not None:
        raise ConfigError(f"Invalid `baseline`: expected a configuration or series of the "
                          f"grid. Received: baseline={baseline!r}. Valid: "
                          f"{', '.join(sorted(names))}.")
    return found


def _config(run: dict) -> dict:
    c = dict(run["config"])
    c.setdefault("impl", "normlab")
    c["backend"] = c.get("backend") or run.get("backend", "")
    return c


def summarize(runs: list[dict], baseline: str | None = None) -> dict[str, dict]:
    """``{experiment: {"meta", "rows", "ab"}}``: one row per configuration.

    ``rows`` hold the main implementation's configurations (normlab's when the grid also ran Keras'
    layers), each with ``paired``: its difference to the baseline (``baseline`` label or series;
    default the first row, or for sweeps the first series at the same swept value) on the same
    backend and with the same settings. ``ab`` compares every other implementation's rows with the
    main one's, seed by seed.

    Only the newest training revision of each experiment is summarized (an older one starts from
    other initial weights, so its seeds pair with nothing), and of runs repeated with the same
    settings and seed (a copied folder) only the last finished; ``meta["ignored"]`` lists the others with the reason.
    """
    by_experiment: dict[str, list[dict]] = {}
    for run in sorted(runs, key=_grid_order):
        by_experiment.setdefault(_config(run)["experiment"], []).append(run)
    tables = {}
    for name, experiment_runs in by_experiment.items():
        kept, ignored = _current_runs(experiment_runs)
        groups: dict[tuple, list[dict]] = {}
        for run in kept:  # one group per configuration: its key without the seed
            groups.setdefault(_run_key(run)[:-1], []).append(run)
        tables[name] = _summarize_experiment(_in_grid_order(groups), baseline)
        tables[name]["meta"]["ignored"] = ignored
    return tables


def _grid_order(run: dict) -> tuple:
    """A run's place: grid order (parallel executors finish out of order), then finish time."""
    index = run.get("grid_index")
    return (index is None, index if index is not None else 0, run.get("finished_at", ""), run["run_dir"])


def _in_grid_order(groups: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """The configurations (runs in grid order each) in grid order: two compare by their runs
    of the first seed both ran (a configuration whose first seed is missing keeps its place:
    ordered by its first run, it came after every other configuration's first seed)."""
    place = [{_config(run)["seed"]: _grid_order(run) for run in runs} for runs in groups.values()]

    def compare(p: int, q: int) -> int:
        shared = [seed for seed in place[p] if seed in place[q]]
        if shared:  # the first seed either ran, whichever of the two is asked first
            seed = min(shared, key=lambda s: (min(place[p][s], place[q][s]), s))
            return -1 if place[p][seed] < place[q][seed] else 1
        return p - q

    items = list(groups.items())
    return dict(items[p] for p in sorted(range(len(items)), key=functools.cmp_to_key(compare)))


def _revision(run: dict) -> int:
    return int(run.get("training_revision") or 0)


def _current_runs(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(kept, ignored)``: the newest revision's runs, one per configuration and seed."""
    newest = max(_revision(r) for r in runs)
    ignored = [dict(run_dir=r["run_dir"], reason=f"training revision {_revision(r)} (this report: {newest})")
               for r in runs if _revision(r) != newest]
    latest: dict[tuple, dict] = {}
    for run in (r for r in runs if _revision(r) == newest):
        key = _run_key(run)
        other = latest.get(key)
        if other is not None:
            older, run = sorted((other, run), key=lambda r: (r.get("finished_at", ""), r["run_dir"]))
            ignored.append(dict(run_dir=older["run_dir"], reason=f"the same run as {run['run_dir']}"))
        latest[key] = run
    kept = [r for r in runs if latest.get(_run_key(r)) is r]
    return kept, ignored


def _run_key(run: dict) -> tuple:
    c = _config(run)
    return (c["label"], c["impl"], c["backend"], Path(run["run_dir"]).parent.name, c["seed"])


def _variant_fields(by_key: dict[tuple, list[dict]]) -> list[str]:
    """The settings that differ between runs of one configuration (its variants:
    runs into the same folder with other epochs, subsets, ...), on which rows are
    paired only when they agree; the grid's own differences (norms, a swept value)
    are not among them."""
    configs: dict[tuple, list[dict]] = {}
    for key, runs in by_key.items():
        configs.setdefault(key[:3], []).append(_config(runs[0]))
    return sorted({k for cs in configs.values() if len(cs) > 1 for k in cs[0]
                   if k != "seed" and any(c.get(k) != cs[0][k] for c in cs)})


def _row(key: tuple, runs: list[dict], label: str) -> dict:
    c = _config(runs[0])
    row = dict(label=label, config_label=c["label"], series=c["series"], x=c["x"], norms=c["norms"], impl=c["impl"],
               backend=c["backend"], learning_rate=c["learning_rate"],
               seeds=sorted(r["config"]["seed"] for r in runs), metric=runs[0]["metric"],
               per_seed={r["config"]["seed"]: r["accuracy"] for r in runs},
               accuracy_examples=min(_accuracy_examples(r) for r in runs))
    for k in _STATS:  # an accuracy comes in steps of one example (see stats)
        count = min(_accuracy_examples(r, k) for r in runs) if k.endswith("accuracy") else 0
        row[k] = stats((r.get(k) for r in runs), 1 / count if count else 0.0)
    row["diverged"] = {r["config"]["seed"]: r["non_finite"] for r in runs if r.get("non_finite")}
    row["params_trainable"] = runs[0]["params"]["trainable"]
    row["params_non_trainable"] = runs[0]["params"]["non_trainable"]
    return row


def _summarize_experiment(by_key: dict[tuple, list[dict]], baseline: str | None) -> dict:
    variants = collections.Counter(key[:3] for key in by_key)  # (label, impl, backend): folders
    backends = sorted({k[2] for k in by_key})
    all_rows = []
    for key, runs in by_key.items():
        label = key[0] + (f" ({key[2]})" if len(backends) > 1 else "")
        label += f" [{key[3].rsplit('-', 1)[-1]}]" if variants[key[:3]] > 1 else ""
        all_rows.append(_row(key, runs, label))
    fields = _variant_fields(by_key)
    for row, runs in zip(all_rows, by_key.values()):
        row["settings"] = json.dumps({k: _config(runs[0]).get(k) for k in fields}, sort_keys=True, default=str)
    impls = list(dict.fromkeys(r["impl"] for r in all_rows))
    main = "normlab" if "normlab" in impls else impls[0]
    # A placement without any norm is the same model under every implementation (it ran
    # under one: the first listed, in runs of earlier versions): it belongs in the main table.
    mains = {_same_model(r) for r in all_rows if r["impl"] == main}
    rows = [r for r in all_rows if r["impl"] == main or (_norm_free(r["norms"]) and _same_model(r) not in mains)]
    others = [r for r in all_rows if not any(r is m for m in rows)]
    all_runs = [r for runs in by_key.values() for r in runs]
    # Trained once: a run copied from another of these (a model without norms under both
    # implementations) counts once in the totals.
    listed = {Path(r["run_dir"]).as_posix() for r in all_runs}
    trained = [r for r in all_runs if not _copy_of_one_of(r, listed)]
    configs = [_config(r) for r in all_runs]
    sweep = configs[0]["sweep"]
    if sweep:
        rows.sort(key=lambda r: (r["series"], -r["x"] if sweep == "batch size" else r["x"]))
    base_label = _pair_with_baseline(rows, sweep, baseline)
    constant = {k: configs[0].get(k) for k in ("dataset", "protocol", "arch", "epochs", "max_steps",
                                               "batch_size", "learning_rate", "train_subset", "test_subset")
                if all(c.get(k) == configs[0].get(k) for c in configs)}
    fixed = (f"optimizer steps ({configs[0]['max_steps']} per run)"
             if all(c["max_steps"] and c["max_steps"] == configs[0]["max_steps"] for c in configs)
             else f"epochs ({configs[0]['epochs']})" if "epochs" in constant else "")
    fallback = next((r.get("notes", {}).get(FALLBACK) for r in all_runs
                     if r.get("notes", {}).get(FALLBACK)), "")
    meta = dict(sweep=sweep, constant=constant, held_fixed=fixed, backends=backends,
                impls=impls, main_impl=main, baseline=base_label,
                runs=len(trained), wall_time_s=sum(r["wall_time_s"] or 0.0 for r in trained),
                train_examples=sorted({r["train_examples"] for r in all_runs} - {None}),
                test_examples=sorted({r["test_examples"] for r in all_runs} - {None}),
                dataset_fallback=fallback,
                notes=notes_for({c["series"]: c["norms"] for c in configs}))
    return {"meta": meta, "rows": rows, "other_rows": others, "ab": _impl_ab(rows, others)}


def _copy_of_one_of(run: dict, run_dirs: set[str]) -> bool:
    """Whether ``run`` was copied from one of ``run_dirs`` (its ``copied_from`` is relative to the output folder)."""
    source = run.get("copied_from")
    return source is not None and any(d == source or d.endswith("/" + source) for d in run_dirs)


def _same_model(row: dict) -> tuple:
    """What makes two rows the same configuration but for the implementation."""
    return row["series"], row["x"], row["backend"], row["norms"], row["settings"]


def _norm_free(norms: str) -> bool:
    try:
        return all(is_identity(s) for s in split_placement(norms))
    except ValueError:  # not a placement: a row of its own
        return False


def _accuracy_examples(run: dict, key: str = "accuracy") -> int:
    """How many examples a run's ``key`` accuracy counts: the test set (test and train-mode accuracies
    too), or for the reported one under the tutorial protocol (a training accuracy) the last epoch's
    examples, every earlier epoch being whole; 0 where the summary does not tell."""
    if key != "accuracy" or not str(run.get("metric", "test")).startswith("train"):
        return int(run.get("test_examples") or 0)
    seen, epochs, per_epoch = (run.get(k) or 0 for k in ("examples_seen", "epochs_run", "train_examples"))
    return int(seen - (epochs - 1) * per_epoch) if seen and epochs and per_epoch else 0


def _resolution(*rows: dict) -> float:
    """The step of the rows' accuracies: one example of the smallest count (0,
    continuous, where a run did not record it)."""
    smallest = min(r["accuracy_examples"] for r in rows)
    return 1.0 / smallest if smallest > 0 else 0.0


def _pair_with_baseline(rows: list[dict], sweep: str, baseline: str | None) -> str:
    """Sets every row's ``paired``; returns the baseline's description.

    A row is paired with a baseline row on its own backend with the same
    settings (and, in a sweep, the same swept value); with none, ``paired`` is
    None and the row is listed as unpaired.
    """
    if not rows:
        return ""
    series = list(dict.fromkeys(r["series"] for r in rows))
    names = {n for r in rows for n in (r["label"], r["config_label"])}
    by_series = sweep and len(series) > 1 and (baseline in series or baseline not in names)

    def pair(r, base_rows):
        match = next((b for b in base_rows if b["backend"] == r["backend"]
                      and b["settings"] == r["settings"]), None)
        r["paired"] = None if match is None else \
            dict(paired(r["per_seed"], match["per_seed"], _resolution(r, match)), baseline=match["label"])

    if by_series:
        base = baseline if baseline in series else series[0]
        missing = "" if baseline is None or baseline in series else f" (no {baseline!r} in this experiment)"
        for r in rows:
            r["is_baseline"], r["paired"] = r["series"] == base, None
            if not r["is_baseline"]:
                pair(r, [b for b in rows if b["series"] == base and b["x"] == r["x"]])
        return f"series {base} at the same {sweep}{missing}"
    base_row = next((r for r in rows if baseline in (r["label"], r["config_label"])), rows[0])
    base_rows = [b for b in rows if b["config_label"] == base_row["config_label"]]
    for r in rows:
        r["is_baseline"], r["paired"] = any(r is b for b in base_rows), None
        if not r["is_baseline"]:
            pair(r, base_rows)
    label = base_row["config_label"] if len({b["label"] for b in base_rows}) > 1 else base_row["label"]
    known = baseline is None or baseline in names or baseline in series  # (one series: its first value's row)
    return label if known else f"{label} (no {baseline!r} in this experiment)"


def _impl_ab(rows: list[dict], others: list[dict]) -> list[dict]:
    """Each other-implementation row against the main row of the same configuration."""
    ab = []
    for o in others:
        r = next((r for r in rows if _same_model(r) == _same_model(o)), None)
        if r is None or _norm_free(o["norms"]):  # no norm: the same model under every implementation
            continue
        d = paired(o["per_seed"], r["per_seed"])  # no floor: identical runs show as identical
        same = sum(round(o["per_seed"][s], 4) == round(r["per_seed"][s], 4) for s in d["seeds"])
        ab.append(dict(label=r["label"], impl=o["impl"], main_impl=r["impl"],  # over the shared seeds
                       main=stats((r["per_seed"][s] for s in d["seeds"]), _resolution(r)),
                       other=stats((o["per_seed"][s] for s in d["seeds"]), _resolution(o)), diff=d,
                       max_abs_diff=max((abs(x) for x in d["diffs"]), default=math.nan),
                       identical_4dp=same, seconds_main=r["seconds_per_epoch"],
                       seconds_other=o["seconds_per_epoch"],
                       params_main=(r["params_trainable"], r["params_non_trainable"]),
                       params_other=(o["params_trainable"], o["params_non_trainable"])))
    return ab


def write_csv(path: Path, table: dict) -> None:
    store.write_text_atomic(path, render_csv(table))


def _json_table(table: dict) -> dict:
    def plain(row):  # JSON object keys are strings
        return {**row, "per_seed": {str(s): a for s, a in row["per_seed"].items()}}

    return {"meta": table["meta"], "rows": [plain(r) for r in table["rows"]],
            "other_rows": [plain(r) for r in table.get("other_rows", [])], "ab": table["ab"]}


def write_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 experiments: list[str] | None = None, baseline: str | None = None) -> list[Path]:
    """Writes every experiment's tables and plot (see module docstring); returns the paths.

    Raises:
        ReportError: ``runs_dir`` does not exist or holds no finished run,
            ``experiments`` names an experiment it has no run of, or
            ``runs_dir`` or ``out_dir`` is empty (not read as the current folder).
        ConfigError: ``baseline`` names no configuration or series of the runs.
    """
    from normlab.lab.plots import plot

    for key, value in (("runs_dir", runs_dir), ("out_dir", out_dir)):
        if value is not None and not str(value):  # Path("") is the current folder
            raise ReportError(empty_value(key, FOLDER, "Pass a folder (runs_dir: the --out folder of a grid)."))
    runs_dir = Path(runs_dir).expanduser()
    if not runs_dir.is_dir():
        raise ReportError(
            f"Invalid `runs_dir`: expected a folder of run directories. Received: "
            f"runs_dir='{runs_dir}', which {'is a file' if runs_dir.exists() else 'does not exist'}. "
            "Pass the --out folder of a grid (default: runs).")
    runs, unfinished = load_runs(runs_dir)
    if not runs:
        raise ReportError(
            f"Invalid `runs_dir`: expected a folder with finished runs (<run>/{store.SUMMARY}). "
            f"Received: runs_dir='{runs_dir}' ({len(unfinished)} unfinished or unreadable runs). "
            "Run `normlab compare` first, or pass the --out folder of a grid."
        )
    baseline = check_baseline(baseline, {r["config"][k] for r in runs for k in ("label", "series")})
    names = {_config(r)["experiment"] for r in runs}
    if set(experiments or ()) - names:
        raise ReportError(f"Invalid `experiments`: expected names of experiments under runs_dir "
                          f"({', '.join(sorted(names))}). Received: experiments={experiments!r}. Pass those names.")
    out = Path(out_dir).expanduser() if out_dir is not None else runs_dir / store.REPORT
    store.check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = summarize(runs, baseline)
    if experiments:
        tables = {k: v for k, v in tables.items() if k in experiments}
    written, sections = [], []
    for name, table in tables.items():
        markdown = render_markdown(name, table)
        sections.append(markdown + f"\n![{name}]({name}.png)\n")
        store.write_text_atomic(out / f"{name}.md", markdown)
        store.write_text_atomic(out / f"{name}.json", store.dumps(_json_table(table)))
        write_csv(out / f"{name}.csv", table)
        plot(out / f"{name}.png", name, table)
        written += [out / f"{name}{ext}" for ext in (".md", ".csv", ".json", ".png")]
    note = unused_note([(path, store.disagreeing(path)) for path in unfinished])
    store.write_text_atomic(out / "report.md", "# normlab lab report\n\n" + "\n".join(sections) + note)
    return written + [out / "report.md"]
