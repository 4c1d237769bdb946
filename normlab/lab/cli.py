"""The ``normlab`` command line: reproduce classic normalization comparisons.

Usage::

    normlab compare                         # 5 norms x 3 seeds on MNIST, then the report
    normlab compare --preset combos         # BN, GN, BN>GN, GN>BN with two convolutions
    normlab compare --norms "group(groups=2)" "layer(axis=[1, 2, 3])"
    normlab sweep batch-size                # BN vs GN at batch 32..2, lr scaled linearly
    normlab sweep batch-size-deep           # the same on a deeper net (last maps 4x4)
    normlab sweep groups                    # GN with G = 1, 2, 5, 10
    normlab compare --executor ray --address local   # runs as Ray tasks, 2 at once on 2 CPUs
    normlab report runs/                    # tables and plots from run directories
    normlab list                            # presets, norms, datasets, config keys

Every run command takes ``--quick`` (a smoke run in seconds on scikit-learn's
digits), ``--backend``, ``--seeds``, ``--epochs``, ``--out`` ... (see ``--help``).

The Keras backend is chosen before Keras is imported: ``--backend``, else
``$KERAS_BACKEND``, else the first of jax, torch, tensorflow that imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

BACKENDS = ("jax", "torch", "tensorflow")


def select_backend(requested: str | None = None, environ=None, importer=None,
                   check_loaded: bool = True) -> tuple[str, str]:
    """Chooses the Keras backend and sets ``KERAS_BACKEND``; returns (backend, why).

    Order: ``requested`` (``--backend``), then ``$KERAS_BACKEND``, then the first of
    jax, torch, tensorflow that imports -- never Keras' own TensorFlow default, so a
    machine with only PyTorch works.
    """
    environ = os.environ if environ is None else environ
    importer = importer or importlib.import_module
    if requested:
        backend, why = requested, "from --backend"
    elif environ.get("KERAS_BACKEND"):
        backend, why = environ["KERAS_BACKEND"], "from KERAS_BACKEND"
    else:
        backend, why, failures = None, "", []
        for candidate in BACKENDS:
            try:
                importer(candidate)
            except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
                failures.append(f"{candidate}: {type(exc).__name__}: {exc}")
                continue
            backend = candidate
            why = f"auto-selected, the first of {', '.join(BACKENDS)} that imports"
            break
        if backend is None:
            raise SystemExit(
                "normlab: error: no Keras backend could be imported "
                f"({'; '.join(failures)}). Install one: pip install jax (or torch, or tensorflow-cpu)."
            )
    if backend not in BACKENDS:
        raise SystemExit(
            f"normlab: error: Invalid `backend`: expected one of {', '.join(BACKENDS)}. "
            f"Received: backend={backend!r}. Pass --backend jax, torch or tensorflow."
        )
    keras = sys.modules.get("keras")
    if check_loaded and keras is not None and keras.backend.backend() != backend:
        raise SystemExit(
            f"normlab: error: Keras is already loaded with the {keras.backend.backend()!r} "
            f"backend. Received: backend={backend!r}. Start a new process."
        )
    environ["KERAS_BACKEND"] = backend
    return backend, why


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "," in text:
            return tuple(int(s) for s in text.split(",") if s.strip())
        count = int(text)
        if count < 1:
            raise ValueError
        return tuple(range(count))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Invalid `seeds`: expected a count N >= 1 (seeds 0..N-1) or a comma list like 0,4,7. "
            f"Received: seeds={text!r}.") from None


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Invalid `values`: expected comma-separated ints like 32,16,8. Received: values={text!r}."
        ) from None


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"Invalid `ray-runtime-env`: expected a JSON object. Received: {text!r} ({exc}). "
            'Write e.g. \'{"pip": ["normlab[lab]"]}\'.') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"Invalid `ray-runtime-env`: expected a JSON object. Received: {text!r}. "
            'Write e.g. \'{"env_vars": {"OMP_NUM_THREADS": "1"}}\'.')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (imports nothing heavy)."""
    run = argparse.ArgumentParser(add_help=False)
    g = run.add_argument_group("run options")
    g.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: $KERAS_BACKEND, "
                   "else the first of jax, torch, tensorflow that imports)")
    g.add_argument("--out", default="runs", help="folder of run directories (default: runs)")
    g.add_argument("--dataset", help="mnist (default), fashion_mnist, cifar10, digits, synthetic")
    g.add_argument("--data-dir", help="folder with the dataset files (see normlab.lab.data)")
    g.add_argument("--protocol", choices=("standard", "tutorial"),
                   help="standard: train on 60k, report test accuracy (default); tutorial: "
                        "train on the 10k test split and report training accuracy")
    g.add_argument("--seeds", type=_seeds, help="N (seeds 0..N-1) or a list like 0,4,7 (default 3)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, dest="learning_rate", help="Adam learning rate")
    g.add_argument("--max-steps", type=int, help="train exactly N optimizer steps per run")
    g.add_argument("--train-subset", type=int, help="use only the first N training images")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (see `normlab list`)")
    g.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: digits, 1 seed, 30 steps per run")
    g.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = run.add_argument_group("where runs execute")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one run after another in this process (default); "
                        "ray: each run a Ray task, as many at once as the cluster allows")
    g.add_argument("--address", help="Ray: 'local' starts Ray on this machine, 'auto' or "
                   "HOST:6379 joins a running cluster, ray://HOST:10001 uses Ray Client "
                   "(default: $RAY_ADDRESS, else local)")
    g.add_argument("--cpus-per-run", type=float, help="Ray: CPUs each run declares (default 1)")
    g.add_argument("--gpus-per-run", type=float, help="Ray: GPUs each run declares (default 0)")
    g.add_argument("--retries", type=int, help="Ray: retries of a run whose worker died "
                   "(default 0: the next invocation redoes it)")
    g.add_argument("--ray-runtime-env", type=_json_object, metavar="JSON",
                   help='Ray: runtime environment for the workers, e.g. \'{"pip": ["normlab[lab]"]}\'')

    parser = argparse.ArgumentParser(prog="normlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compare", parents=[run], help="compare norms (default: the classic five)")
    p.add_argument("--preset", choices=("classic", "combos"), default="classic")
    p.add_argument("--norms", nargs="+", metavar="SPEC",
                   help="norm placements to compare instead of the preset, e.g. batch 'batch>group'")
    p = sub.add_parser("sweep", parents=[run], help="sweep batch size or GN groups")
    p.add_argument("what", choices=("batch-size", "batch-size-deep", "groups"))
    p.add_argument("--values", type=_numbers, help="the swept values, e.g. 32,16,8,4,2")
    p = sub.add_parser("report", help="tables and plots from run directories")
    p.add_argument("runs_dir")
    p.add_argument("--out", help="where to write (default: RUNS_DIR/report)")
    p = sub.add_parser("list", help="presets, norms, datasets and config keys")
    p.add_argument("--backend", choices=BACKENDS)
    return parser


def make_experiment(args: argparse.Namespace):
    """The Experiment the parsed arguments ask for (checks every override key)."""
    from normlab.lab import experiments as E

    overrides = {key: getattr(args, key) for key in
                 ("dataset", "protocol", "epochs", "batch_size", "learning_rate", "max_steps",
                  "train_subset") if getattr(args, key) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Invalid `set`: expected KEY=VALUE. Received: set={item!r}. "
                             "Write e.g. --set epochs=2.")
        overrides[key.strip()] = E.parse_value(key.strip(), value.strip())
    E.check_keys(overrides)
    seeds = args.seeds
    if args.quick:
        overrides = {**E.QUICK, **overrides}
        seeds = seeds or (0,)
    if args.command == "compare":
        if args.norms:
            norms = {spec: spec for spec in args.norms}
            experiment = E.compare(norms, **overrides)
        else:
            experiment = E.preset("compare" if args.preset == "classic" else "combos", **overrides)
    else:
        kwargs = {"values": args.values} if args.values else {}
        experiment = E.preset(args.what, **kwargs, **overrides)
    experiment = experiment.replace(seeds=seeds) if seeds else experiment
    # Smoke runs, the tutorial protocol and other datasets get their own experiment
    # (run directories and report table) instead of clashing with the default runs.
    first = experiment.configs[0]
    suffix = "-quick" if args.quick else ""
    suffix += f"-{first.dataset}" if first.dataset != "mnist" and not args.quick else ""
    suffix += "-tutorial" if first.protocol == "tutorial" else ""
    return experiment.renamed(suffix)


def _run(args, parser) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        experiment = make_experiment(args)
        executor = make_executor(args)
    except ValueError as exc:
        parser.error(str(exc))
    backend, why = use_backend(args.backend, args.argv)
    console.print(f"normlab: Keras backend {backend} ({why})", soft_wrap=True)
    from normlab.lab.models import norm_specs, parse_placement
    from normlab.lab.runner import read_finished, run_dir_for, run_grid

    try:
        for config in experiment.configs:
            norm_specs(config.norms, config.arch)
            parse_placement(config.norms)
    except ValueError as exc:
        parser.error(str(exc))
    grid = experiment.grid()
    if args.dry_run:
        for config in grid:
            run_dir = run_dir_for(args.out, config)
            print(f"{'finished' if read_finished(run_dir) else 'to run  '}  {run_dir}")
        return 0
    from normlab.lab.data import DatasetError
    from normlab.lab.executors import ExecutorError
    from normlab.lab.report import render_markdown, summarize, write_report, load_runs
    from normlab.lab.runner import RunnerError

    try:
        results = run_grid(experiment, args.out, data_dir=args.data_dir,
                           progress=not args.no_progress, console=console, executor=executor)
    except (DatasetError, RunnerError, ExecutorError) as exc:
        console.print(f"normlab: error: {exc}", markup=False, highlight=False)
        return 1
    lost = [r for r in results if r.status == "lost"]
    if len(lost) == len(results):
        console.print(f"normlab: error: all {len(lost)} runs were lost; nothing to report. "
                      "Rerun the same command to redo them.", markup=False, highlight=False,
                      soft_wrap=True)
        return 1
    written = write_report(args.out)
    table = summarize(load_runs(args.out)[0])[experiment.name]
    print(render_markdown(experiment.name, table))
    console.print(f"Report: {written[-1]} (plot: {written[-1].parent / experiment.name}.png)",
                  soft_wrap=True)
    if lost:
        console.print(f"normlab: {len(lost)} of {len(results)} runs were lost (their workers "
                      "died); the report leaves them out. Rerun the same command to redo "
                      "only them:", markup=False, highlight=False, soft_wrap=True)
        for r in lost:
            console.print(f"  {r.run_dir}: {r.error.splitlines()[0]}", soft_wrap=True,
                          markup=False, highlight=False)
        return 1
    return 0


def make_executor(args: argparse.Namespace):
    """The executor the parsed arguments ask for (``--executor`` and its options)."""
    from normlab.lab.executors import make_executor as make

    return make(args.executor, address=args.address, cpus_per_run=args.cpus_per_run,
                gpus_per_run=args.gpus_per_run, retries=args.retries,
                runtime_env=args.ray_runtime_env)


_REEXEC = "_NORMLAB_CLI_BACKEND_REASON"


def use_backend(requested: str | None, argv: list[str] | None) -> tuple[str, str]:
    """:func:`select_backend`, restarting the program once if Keras was loaded too early.

    Keras cannot switch backends in a running process. If something imported it
    before the command line could choose (e.g. a ``sitecustomize``), the ``normlab``
    program (``argv is None``) re-executes itself with ``KERAS_BACKEND`` set; a caller
    passing ``argv`` (tests, notebooks) gets the error instead.
    """
    if os.environ.get(_REEXEC):
        return select_backend(requested)[0], os.environ.pop(_REEXEC)
    keras = sys.modules.get("keras")
    if argv is None and keras is not None:
        env = dict(os.environ)
        backend, why = select_backend(requested, env, check_loaded=False)
        if keras.backend.backend() != backend:
            env[_REEXEC] = why
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "normlab.lab.cli", *sys.argv[1:]], env)
    return select_backend(requested)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``normlab`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "report":
        from normlab.lab.report import write_report

        try:
            written = write_report(args.runs_dir, args.out)
        except FileNotFoundError as exc:
            parser.error(str(exc))
        print((written[-1]).read_text())
        print(f"Wrote {len(written)} files to {written[-1].parent}", file=sys.stderr)
        return 0
    if args.command == "list":
        backend, _ = use_backend(args.backend, argv)
        from normlab.lab import experiments as E
        from normlab.lab.data import available_datasets
        from normlab.registry import registry

        print(f"backend: {backend}")
        print("presets:")
        for name, fn in E.PRESETS.items():
            print(f"  {name}: {(fn.__doc__ or '').splitlines()[0]}")
        print("norms:")
        for name, entry in registry().items():
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {name}{aliases}: {entry.summary}")
        print(f"datasets: {', '.join(available_datasets())}")
        print(f"config keys (--set KEY=VALUE): {', '.join(E.config_keys())}")
        return 0
    return _run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
