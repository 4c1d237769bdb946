"""What each ``normlab`` command does, once :mod:`normlab.lab.cli` has parsed it.

``report`` and ``list`` (without ``norms``) import no deep-learning framework.
Run commands (``compare``, ``sweep``) check everything they can before the
first run trains (:mod:`normlab.lab.preflight`), in this order: values and
keys (no imports), the lab's dependencies and the output folder (no imports),
then the backend, every model of the grid and the dataset (Keras).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from typing import Any

from normlab.lab import preflight
from normlab.lab import presets as P
from normlab.lab.errors import ConfigError
from normlab.lab.experiments import DATASETS, RunConfig, check_keys, config_keys, dataset_key, parse_value
from normlab.lab.models import KERAS_LAYERS

#: Config fields the command and its options set; ``--set`` refuses them.
SET_BY_COMMAND = ("experiment", "label", "series", "sweep", "x", "seed", "impl", "backend", "norms")
_PICKED_BY_COMMAND = "The command picks it (compare, or the sweep named); drop it."
_SET_BY_COMMAND_FIX = {"seed": "Use --seeds (e.g. --seeds 0,1,2 or --seeds 5).", "impl": "Use --impl.",
                       "backend": "Use --backend.", "norms": "Use --norms (compare)."}


#: the settings with an option of their own: key -> the option
_OPTIONS = {"dataset": "--dataset", "protocol": "--protocol", "epochs": "--epochs", "batch_size": "--batch-size",
            "learning_rate": "--lr", "max_steps": "--max-steps", "train_subset": "--train-subset"}


def make_experiment(args: argparse.Namespace):
    """The Experiment the parsed arguments ask for (every value checked, nothing imported)."""
    overrides = {key: getattr(args, key) for key in _OPTIONS if getattr(args, key) is not None}
    given = {key: f"{_OPTIONS[key]} {value}" for key, value in overrides.items()}  # key -> where it was given
    settable = [key for key in config_keys() if key not in SET_BY_COMMAND]
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"Invalid `set`: expected KEY=VALUE. Received: --set {item}. "
                              "Write e.g. --set epochs=2.")
        if key in SET_BY_COMMAND:
            raise ConfigError(f"Invalid `set`: {key} is set by the command, not by --set. "
                              f"Received: --set {item}. {_SET_BY_COMMAND_FIX.get(key, _PICKED_BY_COMMAND)}")
        if key not in settable:
            raise ConfigError(f"Invalid `set`: expected one of the settings {', '.join(settable)}. "
                              f"Received: --set {item}. `normlab list` shows them with their defaults.")
        if key in given:
            raise ConfigError(f"Invalid `set`: {key} is given twice. Received: --set {item} and "
                              f"{given[key]}. Pass one of them.")
        given[key] = f"an earlier --set {item}"
        overrides[key] = parse_value(key, value.strip())
    check_keys(overrides)
    seeds, quick = args.seeds, dict[str, Any](P.QUICK)
    if args.quick:
        info = DATASETS.get(dataset_key(overrides.get("dataset", quick["dataset"])))
        if info:  # a smaller dataset (synthetic): all of it
            _, quick["test_subset"] = info.fit_subsets(overrides.get("protocol", "standard"), 0,
                                                       quick["test_subset"])
        overrides = {**quick, **overrides}
        seeds = seeds or (0,)
    if overrides.get("max_steps") and "epochs" in overrides:
        raise ConfigError(f"Invalid `epochs`: max_steps={overrides['max_steps']} "
                          "(--max-steps, --set max_steps or --quick's) "
                          f"trains a fixed number of steps, so epochs={overrides['epochs']} would be ignored. "
                          "Pass one of --epochs and --max-steps (with --quick: --max-steps 0 --epochs N).")
    if args.command == "compare":
        if args.norms and args.preset is not None:
            raise ConfigError(f"Invalid `norms`: --norms replaces the preset's models. Received: "
                              f"--preset {args.preset} and --norms {' '.join(args.norms)}. Pass one of them.")
        if args.norms:
            norms = {spec: spec for spec in canonical_norms(args.norms)}
            if len(norms) != len(args.norms):
                raise ConfigError(f"Invalid `norms`: expected each spec once. Received: "
                                  f"norms={args.norms!r}. Drop the repeats.")
            build = lambda **kw: P.compare(norms, **kw)  # noqa: E731
        else:
            build = P.PRESETS[P.COMPARE_PRESETS[args.preset or "classic"]].build
    else:
        kwargs = {"values": args.values} if args.values else {}
        build = lambda **kw: P.preset(args.what, **kwargs, **kw)  # noqa: E731
    experiment = build(**overrides)
    experiment = experiment.replace(seeds=seeds) if seeds else experiment
    base = build(**quick) if args.quick else build()
    experiment = P.variant_name(experiment, base, quick=args.quick)
    if args.command == "compare" and args.norms:  # a table of its own, not the preset's
        digest = hashlib.sha256("\n".join(canonical_norms(args.norms)).encode()).hexdigest()[:6]
        experiment = experiment.renamed(f"-norms-{digest}")
    return experiment.with_impls(args.impl)


def canonical_norms(specs: list[str]) -> list[str]:
    """The ``--norms`` placements written one way (``'batch > none'`` is ``'batch>none'``)."""
    from normlab.lab.models import canonical_placement

    try:
        return [canonical_placement(spec) for spec in specs]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_distinct_models(specs: list[str]) -> None:
    """Raises for two placements that build the same model (an alias, another case, the
    arguments in another order or a default spelled out: ``batch``, ``BN``, ``bn``,
    ``group`` and ``group(groups=32)``), which would train it twice."""
    seen: dict[tuple, str] = {}
    for spec in specs:
        try:
            key = _model_key(spec)
        except (ValueError, TypeError):  # an invalid spec: named where the models are built
            continue
        if key in seen:
            raise ConfigError(f"Invalid `norms`: expected each model once. Received: {seen[key]!r} and {spec!r}, "
                              "the same norms (names are read without case, aliases as their norm, "
                              "defaults as if spelled out). Drop one of them.")
        seen[key] = spec


def _model_key(spec: str) -> tuple:
    """What a placement builds: per norm its name and every argument of its factory, defaults
    included (no layer is built: a layer's config would import TensorFlow on any backend)."""
    from normlab.lab.models import parse_placement
    from normlab.registry import registry

    key = []
    for name, kwargs in parse_placement(spec):
        arguments = {**registry()[name].arguments(), **kwargs}
        key.append((name, repr(sorted((k, _as_lists(v)) for k, v in arguments.items()))))
    return tuple(key)


def _as_lists(value: Any) -> Any:
    """``value`` with its tuples as lists: ``axis=(1, 2)`` builds what ``axis=[1, 2]`` does."""
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def make_executor(args: argparse.Namespace):
    """The executor the parsed arguments ask for (``--executor`` and its options)."""
    from normlab.lab.executors import make_executor as make

    try:
        return make(args.executor, address=args.address, cpus_per_run=args.cpus_per_run,
                    gpus_per_run=args.gpus_per_run, retries=args.retries,
                    runtime_env=args.ray_runtime_env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def say(text: str) -> None:
    """One line of progress on stderr (plain text, no markup)."""
    print(text, file=sys.stderr, flush=True)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        return report(args)
    if args.command == "list":
        return list_norms(args) if args.what == "norms" else list_all()
    return run(args)


def report(args) -> int:
    from normlab.lab.report import write_report
    from normlab.lab.report_text import plain

    written = write_report(args.runs_dir, args.out, baseline=args.baseline)
    print(plain(written[-1].read_text()), end="")
    say(f"Wrote {len(written)} files to {written[-1].parent}")
    return 0


def _columns(rows: list[tuple[str, str]], indent: int = 2) -> list[str]:
    width = max(len(name) for name, _ in rows) + 2
    return [f"{' ' * indent}{name:<{width}}{text}" for name, text in rows]


def list_all() -> int:
    lines = ["presets (normlab compare --preset NAME; normlab sweep NAME):"]
    lines += _columns([(f"{'compare --preset ' if n in P.COMPARE_PRESETS else 'sweep '}{n}",
                        P.PRESETS[P.COMPARE_PRESETS.get(n, n)].summary)
                       for n in (*P.COMPARE_PRESETS, *P.SWEEPS)])
    lines += ["", "datasets (--dataset NAME):"]
    lines += _columns([(name, info.summary) for name, info in DATASETS.items()])
    keras = ", ".join(dict.fromkeys(cls for cls, _ in KERAS_LAYERS.values()))
    lines += ["", "implementations (--impl):"]
    lines += _columns([("normlab", "normlab's layers (default)"),
                       ("keras", f"Keras' built-in layers: {keras} (groups=-1 for instance)"),
                       ("normlab,keras", "both, compared seed by seed in the report (a norm Keras "
                                        "lacks runs with normlab's layers only)")])
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    lines += ["", "config keys (--set KEY=VALUE), with their defaults:"]
    lines += _columns([(k, repr(defaults[k])) for k in config_keys() if k not in SET_BY_COMMAND])
    lines += ["", "set by the command and its options, not by --set: " + ", ".join(SET_BY_COMMAND)
              + " (--seeds, --impl, --backend, --norms)."]
    lines += ["", "norms: `normlab list norms` lists every registered norm (starts Keras: "
              "a few seconds)."]
    print("\n".join(lines))
    return 0


def list_norms(args) -> int:
    from normlab.lab.backend import import_keras, use_backend

    backend, _ = use_backend(args.backend, args.argv)
    import_keras(args.verbose)
    from normlab.registry import registry

    print(f"norms (backend {backend}; --norms SPEC, e.g. 'group(groups=5, axis=3)'):")
    rows = []
    for name, entry in registry().items():
        aliases = f" ({', '.join(entry.aliases)})" if entry.aliases else ""
        keras = f" [keras: {KERAS_LAYERS[name][0]}]" if name in KERAS_LAYERS else ""
        kind = "" if entry.kind == "activation" else f" [{entry.kind}: not for --norms]"
        rows.append((name + aliases, entry.summary + keras + kind))
    print("\n".join(_columns(rows)))
    return 0


def run(args) -> int:
    import os

    from normlab.lab.backend import import_keras, use_backend
    from normlab.lab.report import check_baseline

    if args.verbose:
        os.environ["NORMLAB_VERBOSE"] = "1"  # training (and Ray workers) show backend logs too

    experiment = make_experiment(args)
    names = {n for c in experiment.configs for n in (c.label, c.series)}
    args.baseline = check_baseline(args.baseline, names)  # as the grid writes it
    executor = make_executor(args)
    executor.check()
    local = executor.name == "local"
    preflight.check_dependencies(experiment, report=not args.dry_run,
                                 progress=not (args.no_progress or args.dry_run))
    preflight.check_out(args.out)
    backend, why = use_backend(args.backend, args.argv)
    if args.command == "compare" and args.norms:  # the registry imports Keras: on the chosen backend, quietly
        import_keras(args.verbose)
        check_distinct_models(canonical_norms(args.norms))
    say(f"normlab: Keras backend {backend} ({why})")
    experiment = experiment.replace(backend=backend)
    experiment = preflight.check_models(experiment, args.verbose, say=say,
                                        optional_keras=len(args.impl) > 1)
    if args.dry_run:
        return dry_run(experiment, args)
    prepared = preflight.resolve_data(experiment, data_dir=args.data_dir, explicit=explicit(args),
                                      load=local, check_dir=local, progress=not args.no_progress,
                                      say=say)
    return train_and_report(prepared, executor, args)


def explicit(args) -> bool:
    """Whether the dataset was chosen (or its files pointed to): then no fallback to digits."""
    return bool(args.dataset or args.data_dir or args.quick
                or any(s.strip().startswith("dataset=") for s in args.set))


def dry_run(experiment, args) -> int:
    from normlab.lab import store

    local = args.executor == "local"  # Ray's workers never fall back to digits
    prepared = preflight.resolve_data(experiment, data_dir=args.data_dir, explicit=explicit(args) or not local,
                                      load=False, check_dir=local)
    planned = store.plan(experiment.grid(), args.out)
    counts = {a: sum(p.action == a for p in planned) for a in ("run", "reuse", "copy", "redo")}
    say(f"normlab: dry run of {experiment.name}: {len(planned)} run{'s' * (len(planned) != 1)} "
        f"({counts['run']} to run, "
        f"{counts['reuse']} finished earlier and reused, {counts['copy']} the same run finished "
        f"elsewhere and copied, {counts['redo']} unfinished and redone); data: {prepared.data}")
    for p in planned:
        print(f"{p.action:<6} {p.run_dir}" + (f" (from {p.source})" if p.source is not None else ""))
    return 0


def train_and_report(prepared, executor, args) -> int:
    from normlab.lab.report import load_runs, render_markdown, summarize, write_report
    from normlab.lab.report_text import plain
    from normlab.lab.runner import run_grid

    experiment = prepared.experiment
    results = run_grid(experiment, args.out, data_dir=args.data_dir,
                       progress=not args.no_progress, say=say, executor=executor,
                       datasets=prepared.datasets, notes=prepared.notes)
    lost = [r for r in results if r.status == "lost"]
    if len(lost) == len(results):
        say(f"normlab: error: all {len(lost)} runs were lost; nothing to report. "
            "Rerun the same command to redo them.")
        return 1
    written = write_report(args.out, baseline=args.baseline)
    table = summarize(load_runs(args.out)[0], args.baseline)[experiment.name]
    print(plain(render_markdown(experiment.name, table)), end="")
    say(f"Report: {written[-1]} (plot: {written[-1].parent / experiment.name}.png)")
    if prepared.notes.get("dataset_fallback"):
        say("normlab: these runs used scikit-learn's bundled 8x8 digits, not MNIST "
            f"(MNIST {prepared.notes['dataset_fallback']}).")
    if lost:
        say(f"normlab: {len(lost)} of {len(results)} runs were lost (their workers died); the "
            "report leaves them out. Rerun the same command to redo only them:")
        for r in lost:
            say(f"  {r.run_dir}: {r.error.splitlines()[0]}")
        return 1
    return 0
