"""The normlab command line: reproduce classic normalization comparisons.

Usage::

    normlab compare                         # 5 norms x 3 seeds on MNIST, then the report
    normlab compare --preset combos         # the BN/GN tutorial's four two-conv models
    normlab compare --impl normlab,keras    # the same runs with Keras' own layers beside
    normlab compare --norms "group(groups=2)" "layer(axis=[1, 2, 3])"
    normlab sweep batch-size                # BN vs GN at batch 32..2, lr scaled linearly
    normlab report runs/                    # tables and plots from run directories
    normlab list                            # presets, datasets, implementations, config keys

The lab parses and checks its arguments before it imports Keras or any
backend: ``--help``, ``normlab list``, argument errors and ``normlab report``
need no deep-learning framework (two ``--norms`` specs that build the same
model are found once Keras runs on the chosen backend: the registry knows
the norms' defaults). The ``normlab`` program enters through
``_normlab_cli``, which imports the ``normlab`` package without running its
``__init__`` (that imports Keras to register the layers). Run commands then
check every run of the grid (:mod:`normlab.lab.preflight`) before training
any. Errors are one ``normlab: error: ...`` line with the fix (exit status 2);
Ctrl-C stops with one line (exit status 130), and rerunning the same command
resumes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

from normlab._backend import PREFERENCE
from normlab.lab import backend, commands, interrupt
from normlab.lab import presets as P
from normlab.lab.commands import make_executor, make_experiment, say  # noqa: F401 - API
from normlab.lab.errors import ADDRESS, ADDRESS_FIX, FOLDER, LabError, empty_value
from normlab.lab.experiments import DATASETS, IMPLS, MAX_SEED, MAX_SEED_COUNT, RunConfig

BACKEND_NAMES = tuple(PREFERENCE)  # the order `import normlab` picks a backend in, too
DEFAULTS = RunConfig()
INTERRUPTED = "normlab: interrupted; rerunning the same command resumes"

DESCRIPTION = """\
Reproduce classic normalization comparisons on MNIST with several seeds,
paired statistics, tables and plots. Every run writes its own directory under
--out; rerunning a command reuses finished runs and redoes interrupted ones,
and a run another command already finished with the same settings is copied."""

EPILOG = """\
examples:
  normlab compare --quick                  smoke run on the bundled 8x8 digits
  normlab compare                          GroupNorm, InstanceNorm, LayerNorm, BatchNorm, none
  normlab compare --preset combos --protocol tutorial --seeds 5
  normlab compare --impl normlab,keras     normlab's layers and Keras' side by side
  normlab sweep batch-size --max-steps 1875
  normlab report runs                      tables and plots from finished runs
  normlab list                             presets, datasets, implementations, config keys"""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one ``normlab: error: ...`` line."""

    commands: dict[str, _Parser]  # the top-level parser's, by name

    def error(self, message):
        hint = f" (see `{self.prog} --help`)"
        self.exit(2, f"normlab: error: {message}{hint}\n")


def _non_empty(key: str, expected: str, fix: str, convert: Callable[[str], str] = str) -> Callable[[str], str]:
    """The type of an argument whose empty value would silently mean another (``--out ''``
    the current folder, ``--address ''`` Ray on this machine): refused, naming ``key``."""
    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(empty_value(key, expected, fix))
        return convert(text)

    return check


def _folder(key: str, fix: str) -> Callable[[str], str]:
    """A folder argument with ``~`` expanded (the shell leaves ``--out=~/runs`` as it is); not empty."""
    return _non_empty(key, FOLDER, fix, os.path.expanduser)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "," in text:
            seeds = tuple(int(s) for s in _items(text))  # (0,,1 is refused: a seed may be missing)
        else:
            count = int(text)
            if not 1 <= count <= MAX_SEED_COUNT:
                raise ValueError
            return tuple(range(count))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Invalid `seeds`: expected a count N from 1 to {MAX_SEED_COUNT:,} (seeds 0..N-1) or a "
            f"comma list like 0,4,7. Received: seeds={text!r}.") from None
    if not seeds or min(seeds) < 0 or max(seeds) > MAX_SEED or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"Invalid `seeds`: expected distinct ints from 0 to 2**31 - 1 (a repeated seed repeats "
            f"a run exactly). Received: seeds={text!r}. Pass e.g. --seeds 0,1,2.")
    return seeds


def _items(text: str) -> list[str]:
    """The comma-separated items of ``text``: a trailing comma is allowed, an empty item
    between two commas is not (``8,,4`` is refused: a value may be missing)."""
    items = [s.strip() for s in text.split(",")]
    items = items[:-1] if len(items) > 1 and not items[-1] else items
    return [] if any(not s for s in items) else items


def _numbers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in _items(text))
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(
            f"Invalid `values`: expected comma-separated ints like 32,16,8. Received: values={text!r}.")
    return values


def _impls(text: str) -> tuple[str, ...]:
    impls = tuple(_items(text))
    if not impls or any(i not in IMPLS for i in impls) or len(set(impls)) != len(impls):
        raise argparse.ArgumentTypeError(
            f"Invalid `impl`: expected {', '.join(IMPLS)} or normlab,keras, each once. Received: impl={text!r}.")
    return impls


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


def _run_options() -> _Parser:
    run = _Parser(add_help=False)
    g = run.add_argument_group("run options")
    g.add_argument("--backend", choices=BACKEND_NAMES, help="Keras backend (default: "
                   "$KERAS_BACKEND or ~/.keras/keras.json, else the first installed of "
                   f"{', '.join(BACKEND_NAMES)}; jax is the fastest on CPU)")
    g.add_argument("--out", type=_folder("out", "Pass --out with a folder, e.g. --out runs."),
                   default="runs", metavar="DIR",
                   help="folder of run directories (default: runs)")
    g.add_argument("--dataset", help=f"{', '.join(DATASETS)} (default: mnist, or the bundled "
                   "digits when MNIST is neither found nor downloadable, with --executor local)")
    g.add_argument("--data-dir", type=_folder("data_dir", "Pass the folder that holds the dataset's files, "
                                              "or leave --data-dir out to search the usual places."),
                   metavar="DIR", help="folder with the dataset's files (default: "
                   "$NORMLAB_DATA_DIR, the Keras cache, else download once into ~/.cache/normlab)")
    g.add_argument("--protocol", choices=("standard", "tutorial"),
                   help="standard: train on the 60,000 training images, report test accuracy; "
                        "tutorial: train on the 10,000 test images, report the running training "
                        "accuracy, as the tutorials did (default: standard)")
    g.add_argument("--seeds", type=_seeds, metavar="N|LIST",
                   help="N (seeds 0..N-1) or a list like 0,4,7 (default: 3)")
    g.add_argument("--epochs", type=int, metavar="N",
                   help=f"training epochs per run (default: {DEFAULTS.epochs})")
    g.add_argument("--batch-size", type=int, metavar="N", help=f"training batch size (default: "
                   f"{DEFAULTS.batch_size}; the batch-size sweeps set their own)")
    g.add_argument("--lr", type=float, dest="learning_rate", metavar="LR",
                   help=f"Adam learning rate (default: {DEFAULTS.learning_rate:g}; the batch-size "
                        f"sweeps set their own, {DEFAULTS.learning_rate:g} x batch / 32)")
    g.add_argument("--max-steps", type=int, metavar="N", help="train exactly N optimizer steps "
                   "per run instead of --epochs (default: 0, off)")
    g.add_argument("--train-subset", type=int, metavar="N", help="use only the first N training "
                   "images (default: all; batch-size-deep: 20000); for fewer evaluation images, "
                   "--set test_subset=N")
    g.add_argument("--impl", type=_impls, default=("normlab",), metavar="IMPL",
                   help="whose layers: normlab, keras (Keras' built-in layer for each norm), or "
                        "normlab,keras for both, compared seed by seed; with both, a norm Keras "
                        "has no working layer for runs with normlab's only (default: normlab)")
    g.add_argument("--baseline", metavar="LABEL", help="configuration (or sweep series) the "
                   "others are compared with, seed by seed (default: the first)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field that has no option of its own (default: none; "
                        "`normlab list` shows them)")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: the bundled digits, 1 seed, 30 steps per run, 200 test images "
                        "(default: off)")
    g.add_argument("--dry-run", action="store_true", help="check everything, list each run as "
                   "run, reuse, copy or redo, and exit without training (default: off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars)")
    g.add_argument("--verbose", action="store_true",
                   help="show the backends' start-up log lines (default: hidden)")
    g = run.add_argument_group("where runs execute")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one run after another in this process; ray: each run a Ray "
                        "task, as many at once as the cluster allows (default: local)")
    g.add_argument("--address", type=_non_empty("address", ADDRESS, ADDRESS_FIX),
                   help="Ray: 'local' starts Ray on this machine, 'auto' or "
                   "HOST:6379 joins a running cluster, ray://HOST:10001 uses Ray Client "
                   "(default: $RAY_ADDRESS, else local)")
    g.add_argument("--cpus-per-run", type=float, metavar="N",
                   help="Ray: CPUs each run declares (default: 1)")
    g.add_argument("--gpus-per-run", type=float, metavar="N",
                   help="Ray: GPUs each run declares (default: 0)")
    g.add_argument("--retries", type=int, metavar="N", help="Ray: retries of a run whose worker "
                   "died (default: 0, the next invocation redoes it)")
    g.add_argument("--ray-runtime-env", type=_json_object, metavar="JSON", help="Ray: runtime "
                   'environment for the workers, e.g. \'{"pip": ["normlab[lab]"]}\' (default: none)')
    return run


def _described(names) -> str:
    return "\n".join(f"  {n:<16} {P.PRESETS[P.COMPARE_PRESETS.get(n, n)].summary}" for n in names)


def build_parser() -> _Parser:
    """The argument parser (imports nothing heavy)."""
    run = _run_options()
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="normlab", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    p = sub.add_parser("compare", parents=[run], formatter_class=fmt,
                       help="compare norms (default: the classic five)",
                       description="Compare norms after the tutorial's convolutions.\n\npresets:\n"
                       + _described(P.COMPARE_PRESETS))
    p.add_argument("--preset", choices=tuple(P.COMPARE_PRESETS),
                   help="which models (default: classic; see the list above)")
    p.add_argument("--norms", nargs="+", action="extend", metavar="SPEC", help="placements to compare "
                   "instead of the preset, e.g. batch 'batch>group(groups=5)' 'batch>none', in a table of "
                   "their own (compare-norms-<hash of the specs>); repeated, the lists are joined "
                   "(--norms batch --norms group is --norms batch group) (default: none)")
    p = sub.add_parser("sweep", parents=[run], formatter_class=fmt,
                       help="sweep batch size or GroupNorm's groups",
                       description="Sweep one setting.\n\nsweeps:\n" + _described(P.SWEEPS))
    p.add_argument("what", choices=P.SWEEPS, metavar="SWEEP", help=f"one of {', '.join(P.SWEEPS)}")
    p.add_argument("--values", type=_numbers, action="extend", metavar="LIST", help="the swept values, "
                   "e.g. 32,16,8,4,2; repeated, the lists are joined (--values 32,16 --values 8 is "
                   "--values 32,16,8) (default: batch-size 32,16,8,4,2; groups 1,2,5,10)")
    p = sub.add_parser("report", help="tables and plots from run directories",
                       description="Tables and plots from the finished runs under RUNS_DIR "
                       "(imports no deep-learning framework).")
    p.add_argument("runs_dir", type=_folder("runs_dir", "Pass the --out folder of a grid, e.g. normlab report runs."),
                   nargs="?", default="runs", metavar="RUNS_DIR",
                   help="folder of run directories (default: runs)")
    p.add_argument("--out", type=_folder("out", "Pass --out with a folder, or leave it out for RUNS_DIR/report."),
                   metavar="DIR", help="where to write (default: RUNS_DIR/report)")
    p.add_argument("--baseline", metavar="LABEL", help="configuration (or sweep series) the "
                   "others are compared with, seed by seed (default: the first)")
    p = sub.add_parser("list", help="presets, datasets, implementations and config keys",
                       description="What the lab offers. `normlab list norms` also lists every "
                       "registered norm (this starts Keras).")
    p.add_argument("what", nargs="?", choices=("all", "norms"), default="all",
                   help="all (default) or norms")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="for `list norms` (default: as for runs)")
    p.add_argument("--verbose", action="store_true", help="show backend log lines (default: hidden)")
    parser.commands = sub.choices
    return parser


# Options whose value may start with '-' (argparse would take "-1,0" for an option).
_VALUE_OPTIONS = {"--seeds", "--values", "--lr", "--epochs", "--batch-size", "--max-steps",
                  "--train-subset", "--cpus-per-run", "--gpus-per-run", "--retries"}
_NEGATIVE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _join_negative_values(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``normlab`` command; returns the exit status."""
    try:
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
            if extra:  # said by the command's own parser, whose --help lists what it takes
                parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as exc:  # --help (0) or a usage error (2), already printed
            return int(exc.code or 0)
        args.argv = argv
        with interrupt.handling(), backend.process_state_kept():
            return commands.dispatch(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        if argv is None:  # the program: leave now, before a backend's threads crash the shutdown
            sys.stdout.flush()
            os._exit(130)
        return 130
    except LabError as exc:
        print(f"normlab: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # the reader left (`normlab list | head`): no traceback, then or at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
