"""Writes the lab's numbers into docs/choosing.md, from the result files in docs/lab/.

The page's tables are never typed by hand: each sits between the markers

    <!-- lab-table: batch-size -->
    ...
    <!-- /lab-table -->

and is rendered here from ``docs/lab/<name>.json`` (written by ``normlab report``).
When a result file is missing, the table is replaced by a note that the numbers
are pending, with the command that produces them.

    python docs/scripts/lab_tables.py           # rewrite the tables in docs/choosing.md
    python docs/scripts/lab_tables.py --check   # exit 1 if a table is out of date

tests/docs/test_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
PAGE = DOCS / "choosing.md"
LAB = DOCS / "lab"

# The command that produced each result file (see docs/lab/README.md for the exact
# invocations, including --data-dir), then `normlab report RUNS --out docs/lab`.
COMMANDS = {
    "compare": "normlab compare --backend jax --out runs",
    "compare-tutorial": "normlab compare --protocol tutorial --impl normlab,keras --seeds 5 --backend jax --out runs",
    "combos": "normlab compare --preset combos --backend jax --out runs",
    "combos-tutorial": ("normlab compare --preset combos --protocol tutorial --impl normlab,keras --seeds 5 "
                        "--backend jax --out runs"),
    "batch-size": "normlab sweep batch-size --backend jax --out runs",
    "batch-size-steps1875": "normlab sweep batch-size --max-steps 1875 --backend jax --out runs",
    "batch-size-deep": "normlab sweep batch-size-deep --backend jax --out runs",
    "batch-size-deep-steps625": "normlab sweep batch-size-deep --max-steps 625 --backend jax --out runs",
    "groups": "normlab sweep groups --backend jax --out runs",
}
REPORT = "normlab report runs --out docs/lab"

_REGION = re.compile(r"(<!-- lab-table: ([\w-]+) -->\n)(.*?)(<!-- /lab-table -->)", re.S)


def _pct(stat: dict) -> str:
    """Accuracy as percent: mean and 95% interval over seeds."""
    if not stat or not stat.get("n") or stat.get("mean") is None:
        return "-"
    mean = 100 * stat["mean"]
    ci = stat.get("ci95")
    if stat["n"] < 2 or ci is None or not math.isfinite(ci):
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} [{mean - 100 * ci:.2f}, {mean + 100 * ci:.2f}]"


def _loss(stat: dict) -> str:
    if not stat or not stat.get("n") or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.4f}"


def _params(row: dict) -> str:
    return f"{row['params_trainable']:,} / {row['params_non_trainable']:,}"


def _seeds(rows: list[dict]) -> str:
    seeds = sorted({s for row in rows for s in row["seeds"]})
    counts = sorted({len(row["seeds"]) for row in rows})
    per = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{per} seeds per row ({', '.join(map(str, seeds))})"


def _source(name: str, meta: dict, rows: list[dict]) -> str:
    const = meta.get("constant", {})
    train = "/".join(f"{n:,}" for n in meta.get("train_examples", []))
    test = "/".join(f"{n:,}" for n in meta.get("test_examples", []))
    if const.get("max_steps"):
        fixed = [f"{const['max_steps']:,} optimizer steps per run (epochs not held fixed)"]
    else:
        fixed = [f"{const['epochs']} epoch" + ("s" if const.get("epochs", 1) != 1 else "")] if "epochs" in const else []
    if "batch_size" in const:
        fixed.append(f"batch {const['batch_size']}")
    if "learning_rate" in const:
        fixed.append(f"Adam lr {const['learning_rate']:g}")
    tutorial = bool(rows) and rows[0].get("metric", "test") != "test"
    if tutorial:
        images = f"trained on {train} images of its test split, its {test} training images held out"
        accuracy = ("the running training accuracy over the epoch (as the tutorial reported it) and the "
                    "accuracy on the held-out images")
    else:
        images = f"{train} training / {test} test images"
        accuracy = "test set"
    return (
        f"From `docs/lab/{name}.json` ([full table](lab/{name}.md)): {meta.get('runs', '?')} runs, {_seeds(rows)}, "
        f"backend {', '.join(meta.get('backends', []))}, {const.get('dataset', '?')} "
        f"({images}), {const.get('arch', '?')} net, {', '.join(fixed)}. "
        f"Accuracy: {accuracy}; mean over seeds and 95% interval (t-distribution)."
    )


def _figure(name: str) -> str:
    if not (LAB / f"{name}.png").exists():
        return ""
    return (
        f'\n<figure markdown="span">\n  ![{name}](lab/{name}.png)\n'
        f"  <figcaption>Made by <code>{COMMANDS[name]}</code>, then <code>{REPORT}</code>."
        "</figcaption>\n</figure>\n"
    )


def _sweep_table(rows: list[dict]) -> list[str]:
    by = {(row["series"], row["x"]): row for row in rows}
    sizes = sorted({row["x"] for row in rows}, reverse=True)
    paired = any(row.get("paired") for row in rows)
    lines = [
        "| batch | Adam lr | BN, eval mode (moving averages) | BN, train mode (batch statistics) | GN |"
        + (" GN - BN, paired (points) |" if paired else "") + " steps |",
        "|---:|---:|---|---|---|" + ("---|" if paired else "") + "---:|",
    ]
    for b in sizes:
        bn, gn = by.get(("BN", b), {}), by.get(("GN", b), {})
        any_row = bn or gn
        lr = any_row.get("learning_rate")
        steps = any_row.get("steps", {}).get("mean")
        diff = f" {_points(gn.get('paired'))} |" if paired else ""
        lines.append(
            f"| {b:g} | {lr:g} | {_pct(bn.get('accuracy'))} | {_pct(bn.get('train_mode_accuracy'))} "
            f"| {_pct(gn.get('accuracy'))} |{diff} {steps:,.0f} |"
        )
    return lines


def _points(diff: dict | None) -> str:
    """A paired difference in percentage points: mean [95% interval]."""
    if not diff or diff.get("mean") is None:
        return "-"
    if diff.get("low") is None or not math.isfinite(diff["low"]):
        return f"{100 * diff['mean']:+.2f}"
    return f"{100 * diff['mean']:+.2f} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"


def _compare_table(rows: list[dict], head: str, baseline: str | None) -> list[str]:
    tutorial = bool(rows) and rows[0].get("metric", "test") != "test"
    paired = f" vs {baseline}, paired (points) |" if baseline and any(r.get("paired") for r in rows) else ""
    if tutorial:
        lines = [f"| {head} | spec | training accuracy % (running, dropout on) |{paired} held-out accuracy % "
                 "| parameters (trainable / non-trainable) |",
                 "|---|---|---|" + ("---|" if paired else "") + "---|---:|"]
    else:
        lines = [f"| {head} | spec | test accuracy % |{paired} test loss | parameters (trainable / non-trainable) |",
                 "|---|---|---|" + ("---|" if paired else "") + "---:|---:|"]
    for row in rows:
        diff = f" {_points(row.get('paired')) if row['label'] != baseline else 'baseline'} |" if paired else ""
        middle = _pct(row.get("test_accuracy")) if tutorial else _loss(row["loss"])
        lines.append(f"| {row['label']} | `{row['norms']}` | {_pct(row['accuracy'])} |{diff} {middle} "
                     f"| {_params(row)} |")
    return lines


def _ab_table(ab: list[dict], main: str) -> list[str]:
    """normlab's layers against Keras' own, seed by seed (``--impl normlab,keras``)."""
    if not ab:
        return []
    other = ab[0]["impl"]
    lines = ["", f"The same runs with Keras' own layers (`--impl {main},{other}`), seed by seed:", "",
             f"| model | {main} % | {other} % | {main} - {other}, paired (points) | seeds identical to 4 decimals "
             "| largest per-seed difference (points) | parameters equal |",
             "|---|---|---|---|---:|---:|---|"]
    for row in ab:
        n = row["diff"].get("n") or 0
        lines.append(
            f"| {row['label']} | {_pct(row['main'])} | {_pct(row['other'])} | {_points(row['diff'])} "
            f"| {row['identical_4dp']} of {n} | {100 * row['max_abs_diff']:.2f} "
            f"| {'yes' if row['params_main'] == row['params_other'] else 'no'} |")
    return lines


def _groups_table(rows: list[dict]) -> list[str]:
    lines = ["| groups G | channels per group (of 10) | test accuracy % | test loss |",
             "|---:|---:|---|---:|"]
    for row in sorted(rows, key=lambda r: r["x"]):
        g = int(row["x"])
        lines.append(f"| {g} | {10 // g} | {_pct(row['accuracy'])} | {_loss(row['loss'])} |")
    return lines


def render(name: str) -> str:
    """The Markdown that goes between the markers for result ``name``."""
    path = LAB / f"{name}.json"
    if name not in COMMANDS:
        raise ValueError(f"Invalid `name`: expected one of {', '.join(COMMANDS)}. Received: name={name!r}.")
    if not path.exists():
        return (
            f"!!! note \"Pending\"\n    The numbers of this experiment are not in yet "
            f"(`docs/lab/{name}.json` does not exist). They are produced by\n    "
            f"`{COMMANDS[name]}`, then `{REPORT}`; then `python docs/scripts/lab_tables.py` "
            "fills in this table.\n"
        )
    data = json.loads(path.read_text())
    rows = data["rows"]
    if name.startswith("batch-size"):
        table = _sweep_table(rows)
    elif name == "groups":
        table = _groups_table(rows)
    else:
        head = "model" if name.startswith("combos") else "norm"
        table = _compare_table(rows, head, data["meta"].get("baseline"))
        table += _ab_table(data.get("ab") or [], data["meta"].get("main_impl", "normlab"))
    return "\n".join(table) + "\n\n" + _source(name, data["meta"], rows) + "\n" + _figure(name)


def update(page: Path = PAGE, *, check: bool = False) -> list[str]:
    """Renders every table of ``page``; returns the names of those that changed.

    With ``check=True`` the page is not written.
    """
    text = page.read_text()
    changed = []

    def replace(match: re.Match) -> str:
        start, name, old, end = match.groups()
        new = render(name)
        if new != old:
            changed.append(name)
        return start + new + end

    new_text = _REGION.sub(replace, text)
    if changed and not check:
        page.write_text(new_text)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date tables (exit 1)")
    args = parser.parse_args(argv)
    changed = update(check=args.check)
    verb = "out of date" if args.check else "rewritten"
    print(f"{PAGE.relative_to(DOCS.parent)}: {verb}: {', '.join(changed) or 'none'}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
