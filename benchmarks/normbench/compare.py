"""``--compare BASE.json``: is each row of this run faster, slower or within noise of BASE?

Per row and per normlab implementation (``normlab``: fast paths on,
``general``: off), two samples per run are tested with the Mann-Whitney
rank test (:func:`.stats.compare_samples`):

* ``time/keras`` (the default verdict): the implementation's time over
  Keras' time *in the same round*. Keras' code does not change between the
  two runs, so this cancels much of a difference in the machine's load.
* ``time``: the raw per-round times, which also move with the load.

The effect is the Hodges-Lehmann ratio (the median of all current/base
pairs). Three guards keep a shared machine from inventing differences,
each measured to matter (two back-to-back runs of the same code, 16
comparisons: 5 came out "different" at p < 0.01 without them):

* Holm's step-down correction over all the rows' comparisons (the
  question is whether *any* row regressed);
* a row whose per-round ratio spreads too wide in either run (an IQR over
  ``--max-spread`` of its median, the tables' spread rule; their second
  rule, the median's error bound, is not applied here) is ``undecided``;
* *controls*: the native op and the floor, code that did not change, are
  compared the same way; where one of the row's controls moved
  significantly, the machine drifted between the runs for that row and its
  verdict is ``undecided``.

Work counts (``--work``), being deterministic, are compared exactly.
Results from different CPUs are refused (``--force-compare`` turns that
into a loud warning).
"""

from __future__ import annotations

import math

from . import stats
from .machine import differences

COMPARED = ("normlab", "general")
#: Code that does not change with normlab: where it moves, the machine did.
CONTROLS = ("native", "floor")


def _key(backend, row):
    return (backend, row["mode"], row["op"], tuple(row["shape"]), row["pass"])


def index_rows(report):
    """``{(backend, mode, op, shape, pass): row}`` of a result written by ``run.py``."""
    return {_key(b, row): row for b, res in report.get("backends", {}).items() for row in res.get("rows", [])}


def has_rounds(report):
    return any("rounds_ms" in row.get(impl, {}) for row in index_rows(report).values() for impl in COMPARED)


def _per_round_over(row, impl, reference):
    a, b = row.get(impl, {}).get("rounds_ms"), row.get(reference, {}).get("rounds_ms")
    if not a or not b or len(a) != len(b):
        return None
    return [x / y for x, y in zip(a, b) if y > 0]


def _spread(samples):
    """IQR over median: what makes a table's ratio ``undecided``."""
    return (stats.quantile(samples, 0.75) - stats.quantile(samples, 0.25)) / stats.median(samples)


def _work_change(base, current, impl):
    a, b = (base.get("work") or {}).get(impl), (current.get("work") or {}).get(impl)
    if not a or not b or "error" in a or "error" in b:
        return None
    same = a["ops"] == b["ops"] and a["bytes"] == b["bytes"] and a["bytes_max"] == b["bytes_max"]
    return {"same": same, "ops": (a["ops"], b["ops"]),
            "bytes_per_input": (a["bytes_per_input"], b["bytes_per_input"])}


def compare_rows(base_row, current_row, impl, by="keras", alpha=0.01, min_effect=0.05,
                 max_spread=stats.MAX_SPREAD):
    """One implementation of one row: both statistics, the one the verdict uses, whether
    either run's samples of it spread too wide (``noisy``), the work counts' change."""
    a_raw, b_raw = (r.get(impl, {}).get("rounds_ms", []) for r in (base_row, current_row))
    out = {"time": stats.compare_samples(a_raw, b_raw, alpha, min_effect)}
    a, b = _per_round_over(base_row, impl, "keras"), _per_round_over(current_row, impl, "keras")
    if a is not None and b is not None and impl != "keras":
        out["time/keras"] = stats.compare_samples(a, b, alpha, min_effect)
    out["statistic"] = "time/keras" if by == "keras" and "time/keras" in out else "time"
    samples = (a, b) if out["statistic"] == "time/keras" else (a_raw, b_raw)
    out["noisy"] = any(_spread(s) > max_spread for s in samples if s)
    out["verdict"] = out[out["statistic"]]["verdict"]
    out["work"] = _work_change(base_row, current_row, impl)
    return out


def holm(pvalues, alpha):
    """Which of ``pvalues`` Holm's step-down procedure rejects at family-wise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


#: Two runs of the same code on an idle machine should give every ratio
#: decided in both within this relative difference (benchmarks/README.md).
AGREEMENT = 0.10


def _decided(ratio):
    """Whether a stored ratio is decided, by the rule of the run that wrote it
    and by today's (results written before the median's precision counted
    were decided by their spread alone)."""
    spread, rounds = ratio.get("spread"), ratio.get("rounds")
    return bool(ratio.get("decided") and ratio.get("median")
                and (spread is None or not rounds or stats.is_decided(rounds, spread, max_spread=math.inf)))


def agreement(a, b, tolerance=AGREEMENT):
    """How far the printed ratios (normlab x Keras, x native, ...) of two runs
    are apart, over the ratios both runs decided: ``{"compared", "max",
    "median", "beyond": [(row key, ratio name, base, current), ...]}``."""
    diffs, beyond = [], []
    for key in [k for k in b if k in a]:
        for name, ra in (a[key].get("ratios") or {}).items():
            rb = (b[key].get("ratios") or {}).get(name)
            if not (rb and _decided(ra) and _decided(rb)):
                continue
            diff = abs(rb["median"] / ra["median"] - 1.0)
            diffs.append(diff)
            if diff > tolerance:
                beyond.append((list(key), name, ra["median"], rb["median"]))
    diffs.sort()
    return {"tolerance": tolerance, "compared": len(diffs), "max": diffs[-1] if diffs else None,
            "median": diffs[len(diffs) // 2] if diffs else None, "beyond": beyond}


def thread_differences(base, current):
    """Lines for the thread settings that differ: ``--threads`` and each backend's recorded threads."""
    lines = []
    ta, tb = (base.get("config") or {}).get("threads"), (current.get("config") or {}).get("threads")
    if ta != tb:
        lines.append(f"--threads: {ta or 'default'} vs {tb or 'default'}")
    for backend in sorted(set(base.get("backends", {})) & set(current.get("backends", {}))):
        a = base["backends"][backend].get("threads") or {}
        b = current["backends"][backend].get("threads") or {}
        lines += [f"{backend} {k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return lines


def compare_reports(base, current, by="keras", alpha=0.01, min_effect=0.05, max_spread=stats.MAX_SPREAD):
    """Every row in both results, compared; the rows only one of them has; the machines' differences."""
    if not has_rounds(base):
        raise ValueError("BASE has no per-round times (written by an older run.py): rerun it with this one")
    cpu, other = differences(base.get("machine"), current.get("machine"))
    other += thread_differences(base, current)
    a, b = index_rows(base), index_rows(current)
    controls = CONTROLS + (("keras",) if by == "time" else ())
    rows, checks = [], []
    for key in [k for k in b if k in a]:
        moved = []
        for impl in controls:
            if impl in a[key] and impl in b[key]:
                c = compare_rows(a[key], b[key], impl, by, alpha, min_effect, max_spread)
                checks.append(c)
                if c["verdict"] in ("faster", "slower"):
                    moved.append(f"{impl} {c['verdict']} x{c[c['statistic']]['ratio']:.2f}")
        for impl in COMPARED:
            if impl in a[key] and impl in b[key]:
                rows.append({"key": list(key), "impl": impl, "controls_moved": moved,
                             **compare_rows(a[key], b[key], impl, by, alpha, min_effect, max_spread)})
    tested = [r for r in rows if r[r["statistic"]]["p"] is not None]
    for row, significant in zip(tested, holm([r[r["statistic"]]["p"] for r in tested], alpha)):
        row["holm_significant"] = significant
        if row["verdict"] in ("faster", "slower") and not significant:
            row["verdict"] = "within noise"
    for row in rows:
        if row["verdict"] != "too few rounds" and (row["noisy"] or (row["controls_moved"] and row["verdict"]
                                                                     in ("faster", "slower"))):
            row["verdict"] = "undecided"
    summary = {}
    for row in rows:
        summary[row["verdict"]] = summary.get(row["verdict"], 0) + 1
    return {"test": stats.TEST_NAME, "alpha": alpha, "min_effect": min_effect, "by": by,
            "max_spread": max_spread, "cpu_differences": cpu, "other_differences": other, "rows": rows,
            "controls": {"compared": len(checks),
                         "moved": sum(c["verdict"] in ("faster", "slower") for c in checks)},
            "only_in_base": [list(k) for k in a if k not in b],
            "only_in_current": [list(k) for k in b if k not in a], "summary": summary,
            "agreement": agreement(a, b)}


def _stat_text(name, s):
    if s["p"] is None:
        return f"{name}: too few rounds ({s['n_base']} vs {s['n_current']})"
    unit = " ms" if name == "time" else ""
    return (f"{name} {s['median_base']:.3g}{unit} -> {s['median_current']:.3g}{unit} "
            f"x{s['ratio']:.3f} (p={s['p']:.1e}, U={s['u']:.0f}, n={s['n_base']}/{s['n_current']})")


def _verdict_text(row):
    v = row["verdict"]
    if v in ("faster", "slower"):
        return v.upper()
    if v == "undecided":
        return "undecided (" + ("spread too wide" if row["noisy"] else
                                "controls moved: " + ", ".join(row["controls_moved"])) + ")"
    return v


def format_lines(result):
    """The printed comparison: a banner where the CPUs differ, one line per row, a summary."""
    lines = []
    if result["cpu_differences"]:
        bar = "!" * 78
        lines += [bar, "!! WARNING: BASE and this run are NOT the same CPU; timings are not comparable:"]
        lines += [f"!!   {d}" for d in result["cpu_differences"]] + [bar]
    if result["other_differences"]:
        lines.append("note: the runs differ in " + "; ".join(result["other_differences"]))
    statistic = "time/keras" if result["by"] == "keras" else "time"
    lines.append(f"compare: {result['test']}, on per-round {statistic} (time where Keras is missing). FASTER/SLOWER "
                 f"needs Holm-corrected p < {result['alpha']:g} over all rows, an effect (Hodges-Lehmann ratio) beyond "
                 f"±{100 * result['min_effect']:.0f}%, a spread (IQR/median) within {result['max_spread']:g} in both "
                 "runs, and the row's controls (native op, floor: unchanged code) not moved")
    for row in result["rows"]:
        backend, mode, op, shape, pass_ = row["key"]
        head = f"{backend:10} {mode:16} {op:17} {str(tuple(shape)):17} {pass_:8} {row['impl']:8}"
        stats_text = "; ".join(_stat_text(name, row[name]) for name in ("time/keras", "time") if name in row)
        work = row.get("work")
        work_text = "" if work is None else (" | work same" if work["same"] else
                                             f" | WORK CHANGED: ops {work['ops'][0]} -> {work['ops'][1]}, bytes "
                                             f"{work['bytes_per_input'][0]:.2f}x -> {work['bytes_per_input'][1]:.2f}x input")
        lines.append(f"{head} {_verdict_text(row):14} {stats_text}{work_text}")
    for label in ("only_in_base", "only_in_current"):
        if result[label]:
            lines.append(f"{label.replace('_', ' ')}: {len(result[label])} rows")
    controls = result["controls"]
    lines.append(f"controls: {controls['moved']} of {controls['compared']} comparisons of unchanged code (native op, "
                 f"floor) differ at p < {result['alpha']:g} without correction"
                 + (": the machine drifted between the runs" if controls["moved"] else ""))
    agree = result.get("agreement")
    if agree and agree["compared"]:
        lines.append(f"agreement: {agree['compared']} ratios decided in both runs differ by at most "
                     f"{100 * agree['max']:.1f}% (median {100 * agree['median']:.1f}%); "
                     f"{len(agree['beyond'])} beyond {100 * agree['tolerance']:.0f}%")
        for key, name, x, y in agree["beyond"]:
            lines.append(f"  {' '.join(str(k) for k in key)} {name}: {x:.3g} -> {y:.3g}")
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(result["summary"].items()))
    lines.append(f"summary: {summary or 'no rows in common'}")
    return lines
