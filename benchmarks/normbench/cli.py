"""The driver: one subprocess per backend, the machine, tables, targets, JSON, ``--compare``."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import machine, stats
from .compare import compare_reports, format_lines
from .report import print_table, targets

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
RESULTS = ROOT / "benchmarks" / "results"
BACKENDS = ("tensorflow", "jax", "torch")
ROUNDS, QUICK_ROUNDS = 25, 15

DESCRIPTION = """normlab benchmark suite: one command, every backend side by side.

    python benchmarks/run.py                      # all backends, full shapes, end-to-end
    python benchmarks/run.py --quick              # smaller shapes, fewer rounds
    python benchmarks/run.py --backends torch --no-e2e --rows GroupNorm --passes fwd
    python benchmarks/run.py --work               # also count ops and bytes per call
    python benchmarks/run.py --compare BASE.json  # run, then faster/slower/within noise per row
    python benchmarks/run.py --compare BASE.json --against NEW.json   # compare two files, no run

Each Keras backend runs in its own subprocess. Per row, normlab (fast paths
on), the general path (off), Keras' layer, the native op and the floor are
timed in many short interleaved rounds; times are medians (and minima) over
the rounds, ratios the medians of the per-round ratios with their IQR, and
'undecided' where that spread is too wide. See benchmarks/README.md.
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller shapes, fewer rounds, a shorter end-to-end run")
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=None,
                   help=f"interleaved rounds per row (default {ROUNDS}, quick {QUICK_ROUNDS}); --repeats is an alias")
    p.add_argument("--sweeps", type=int, default=5,
                   help="the rounds of each row are spread over this many sweeps through all rows (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each implementation first (default 2)")
    p.add_argument("--min-sample-ms", type=float, default=1.0,
                   help="calls shorter than this are repeated back to back within a sample (default 1.0)")
    p.add_argument("--max-spread", type=float, default=stats.MAX_SPREAD,
                   help=f"a ratio whose IQR exceeds this fraction of its median is undecided (default {stats.MAX_SPREAD})")
    p.add_argument("--rows", help="only the rows whose 'op shape' matches this regular expression, e.g. GroupNorm")
    p.add_argument("--passes", help="comma-separated subset of fwd,fwd+bwd")
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end CNN epochs")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of every backend (default: each backend's own choice); 1 keeps a "
                        "busy other core from stalling multi-threaded kernels")
    p.add_argument("--work", action="store_true", help="also count kernels and bytes moved per call (deterministic)")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), help="where to write the results")
    p.add_argument("--compare", metavar="BASE.json", help="compare with an earlier result, row by row")
    p.add_argument("--against", metavar="NEW.json", help="with --compare: compare this file instead of running")
    p.add_argument("--by", choices=("keras", "time"), default="keras",
                   help="verdict from per-round time/Keras time (default) or raw time")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the rank test (default 0.01)")
    p.add_argument("--min-effect", type=float, default=0.05, help="smallest relative change reported (default 0.05)")
    p.add_argument("--force-compare", action="store_true", help="compare results from different CPUs (warns)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problem = _invalid(args)
    if problem:
        p.error(problem)
    return args


PASSES = ("fwd", "fwd+bwd")


def _invalid(args):
    """What is wrong with the arguments, as one message (argument, value, expectation, fix), or None."""
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        return (f"--backends {args.backends!r}: expected a comma-separated subset of {','.join(BACKENDS)}; "
                f"unknown: {', '.join(unknown) or 'none given'}")
    checks = [("--rounds", args.rounds, args.rounds is None or args.rounds >= 1, "an integer >= 1"),
              ("--sweeps", args.sweeps, args.sweeps >= 1, "an integer >= 1"),
              ("--warmup", args.warmup, args.warmup >= 0, "an integer >= 0"),
              ("--min-sample-ms", args.min_sample_ms, args.min_sample_ms >= 0, "a number >= 0"),
              ("--max-spread", args.max_spread, args.max_spread > 0, "a number > 0"),
              ("--threads", args.threads, args.threads is None or args.threads >= 1,
               "an integer >= 1 (leave it out for each backend's own choice)"),
              ("--alpha", args.alpha, 0 < args.alpha < 1, "a number in (0, 1)"),
              ("--min-effect", args.min_effect, args.min_effect >= 0, "a number >= 0")]
    for name, value, ok, expected in checks:
        if not ok:
            return f"{name} {value}: expected {expected}"
    if args.passes is not None:
        bad = [q for q in args.passes.split(",") if q.strip() not in PASSES]
        if bad or not args.passes.strip():
            return f"--passes {args.passes!r}: expected a comma-separated subset of {','.join(PASSES)}"
    if args.rows is not None:
        try:
            re.compile(args.rows)
        except re.error as error:
            return f"--rows {args.rows!r}: not a regular expression ({error}); e.g. --rows 'GroupNorm|LayerNorm'"
    if args.rows is not None or args.passes is not None:
        from .worker import FULL_CASES, QUICK_CASES, select_cases  # (no framework: the case list only)

        passes = [q.strip() for q in args.passes.split(",")] if args.passes else None
        if not select_cases(args.quick, args.rows, passes):
            cases = sorted({f"{name} {shape}" for name, _, shape, _ in (QUICK_CASES if args.quick else FULL_CASES)})
            return (f"--rows {args.rows!r} --passes {args.passes!r}: no row of this run matches; "
                    f"the rows are {'; '.join(cases)}")
    for name, path in (("--compare", args.compare), ("--against", args.against)):
        if path is not None and not Path(path).is_file():  # (checked before the run, not after it)
            return f"{name} {path}: no such file; pass a JSON file an earlier run wrote (--json)"
    return None


def _compare(base_path, current, args):
    """Prints the comparison; returns ``(exit code, comparison)``: 2 refused, 1 a row slower, 0 otherwise."""
    base = json.loads(Path(base_path).read_text())
    try:
        result = compare_reports(base, current, by=args.by, alpha=args.alpha, min_effect=args.min_effect,
                                 max_spread=args.max_spread)
    except ValueError as error:
        print(f"\n=== compare with {base_path}: {error}")
        return 2, None
    result["base"] = str(base_path)
    print(f"\n=== compare with {base_path} (BASE: {base.get('command')}, {base.get('date', 'date not recorded')})")
    if result["cpu_differences"] and not args.force_compare:
        print("REFUSED: BASE was measured on a different CPU, so its times say nothing about this one:")
        for line in result["cpu_differences"]:
            print(f"  {line}")
        print("(--force-compare compares anyway, with a warning)")
        return 2, result
    for line in format_lines(result):
        print(line)
    return (1 if result["summary"].get("slower") else 0), result


def _run_backend(backend, config):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if config.get("threads"):
        n = str(config["threads"])
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_NUM_INTRAOP_THREADS=n)
        if n == "1":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    cmd = [sys.executable, str(RUN), "--worker", backend, "--out", out, "--config", json.dumps(config)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(f"[{backend}] failed with exit code {proc.returncode}", file=sys.stderr)
            return None
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        from .worker import worker

        worker(args.worker, json.loads(args.config), args.out)
        return 0

    info = machine.machine_info(ROOT)
    if args.against:
        if not args.compare:
            print("--against needs --compare BASE.json", file=sys.stderr)
            return 2
        current = json.loads(Path(args.against).read_text())
        print(f"=== {args.against}: {current.get('command')}")
        for line in machine.header_lines(current.get("machine", {}), current.get("machine", {}).get("load_start"),
                                         current.get("machine", {}).get("load_end")):
            print(line)
        return _compare(args.compare, current, args)[0]

    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    passes = [p.strip() for p in args.passes.split(",")] if args.passes else None
    config = {"rounds": rounds, "sweeps": args.sweeps, "warmup": args.warmup, "min_sample_ms": args.min_sample_ms,
              "max_spread": args.max_spread, "quick": args.quick, "rows": args.rows, "passes": passes,
              "e2e": args.e2e, "work": args.work, "threads": args.threads}
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info["load_start"] = machine.load()
    print("=== normlab benchmark, " + time.strftime("%Y-%m-%d %H:%M:%S"))
    for line in machine.header_lines(info, info["load_start"]):
        print(line)
    results, failed = {}, []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"[{backend}] running ...", file=sys.stderr, flush=True)
        load_before, t0 = machine.load(), time.perf_counter()
        result = _run_backend(backend, config)
        if result is None:
            failed.append(backend)
            continue
        result.update(seconds=time.perf_counter() - t0, load_before=load_before, load_after=machine.load())
        results[backend] = result
        print_table(result)

    checks = targets(results)
    print("\n=== targets (met: the IQR of the per-round ratios clears the target; undecided: it straddles it)")
    for what, status, value in checks:
        print(f"  [{status if status != 'missed' else 'MISSED'}] {what}: {value}")
    total = time.perf_counter() - started
    info["load_end"] = machine.load()
    print(f"\nload at the end: {machine.load_text(info['load_end'])}; total {total:.0f} s")
    report = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py"] + (argv if argv is not None else sys.argv[1:])),
        "date": started_at, "machine": info, "config": config,
        "rounds": rounds, "quick": args.quick, "seconds": total, "backends": results,
        "targets": [{"target": w, "status": s, "met": s == "met", "value": v} for w, s, v in checks],
    }
    measured = any(r.get("rows") or r.get("e2e") for r in results.values())
    if not measured:
        why = (f"{', '.join(failed)} failed (its output is above)" if failed else
               f"no row matched --rows {args.rows!r} --passes {args.passes!r}")
        print(f"\nnot written: {why}; {args.json} is left as it was", file=sys.stderr)
        return 1
    code = 0
    if args.compare:  # the backends that ran, even when another failed
        code, comparison = _compare(args.compare, report, args)
        report["comparison"] = comparison
    path = Path(args.json)
    if failed:  # a partial run never replaces a complete one: it goes beside it
        report["failed"] = failed
        path = path.with_name(f"{path.stem}.partial{path.suffix}")
        print(f"\n{', '.join(failed)} failed (its output is above): {args.json} is left as it was, "
              f"the other backends' results go to {path}", file=sys.stderr)
        code = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return code
