"""Run a grid of configurations x seeds, one directory per run, resumable.

:func:`run_grid` takes the output folder's lock, plans the grid with
:func:`normlab.lab.store.plan` (finished runs are reused, unfinished ones
redone), hands the rest to an executor (:mod:`normlab.lab.executors`) and
prints one line per run. Killing a grid (even with ``kill -9``) loses at most
the runs in flight; the same command resumes it.

Dependencies point one way: ``runner -> executors -> (training, store)``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

from normlab.lab import store
from normlab.lab.errors import LabError
from normlab.lab.experiments import Experiment, RunConfig


class RunnerError(LabError, RuntimeError):
    """A grid cannot be run as asked (e.g. for another backend than Keras runs on)."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run_grid` did for one run: ``status`` is "done", "skipped" or "lost"."""

    config: RunConfig
    run_dir: Path
    status: str
    summary: dict
    error: str = ""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def with_backend(configs: list[RunConfig], backend: str | None = None) -> list[RunConfig]:
    """``configs`` with an empty ``backend`` set to ``backend`` (default: Keras' current one)."""
    if all(c.backend for c in configs):
        return list(configs)
    if backend is None:
        import keras

        backend = keras.backend.backend()
    return [c if c.backend else dataclasses.replace(c, backend=backend) for c in configs]


def run_grid(runs: Experiment | list[RunConfig], out: str | os.PathLike = "runs", *,
             data_dir: str | os.PathLike | None = None, progress: bool = True,
             say: Callable[[str], None] | None = None, executor=None,
             datasets: dict | None = None, notes: dict | None = None) -> list[RunResult]:
    """Runs every configuration not finished yet under ``out``; returns one result per run.

    Args:
        runs: an Experiment (all its configurations x seeds) or a list of RunConfigs.
        out: root folder of the run directories; locked while the grid runs.
        data_dir: passed to ``load_dataset`` (where MNIST etc. are found).
        progress: show progress bars (needs rich; without it, no bars).
        say: prints one line of progress; default: to stderr.
        executor: where runs execute, from :func:`normlab.lab.executors.make_executor`;
            default: one after another in this process. With the Ray executor a run
            whose worker died comes back with status "lost" (and no summary).
        datasets: already loaded datasets by name (the local executor uses them).
        notes: recorded in every run's summary (e.g. why the dataset was replaced).

    Results are in grid order; ``status`` is "done", "skipped" (finished earlier,
    here or, with the same settings and seed, under another experiment of
    ``out`` or, a model without norms, another implementation: copied, see
    :func:`normlab.lab.store.find_twin`) or "lost".

    Raises:
        LockedError: another process is running a grid in ``out``.
        RunnerError: a configuration asks for another backend than Keras runs on.
    """
    from normlab.lab.executors import LocalExecutor

    out = os.path.expanduser(out)  # as store.check_out reads it
    say = say or _stderr
    executor = executor or LocalExecutor()
    configs = runs.grid() if isinstance(runs, Experiment) else list(runs)
    configs = with_backend(configs)
    if isinstance(executor, LocalExecutor):
        _check_backend(configs)
    with store.OutputLock(out):
        planned = store.plan(configs, out)  # refuses edited runs before training anything
        results: dict[int, RunResult] = {}
        todo = []
        for p in planned:
            if p.action == "reuse":
                results[p.index] = RunResult(p.config, p.run_dir, "skipped", p.summary or {})
                say(f"[{p.index + 1}/{len(configs)}] {where(p.config)}: finished earlier, reused")
            elif p.action == "copy" and p.source is not None:
                summary = store.copy_run(p.source, p.run_dir, p.config, out, grid_index=p.index)
                results[p.index] = RunResult(p.config, p.run_dir, "skipped", summary)
                say(f"[{p.index + 1}/{len(configs)}] {where(p.config)}: the same run finished as "
                    f"{summary['copied_from']}, copied")
            else:
                todo.append((p.config, p.run_dir, p.index))
        if todo and not isinstance(executor, LocalExecutor):
            say(f"{len(todo)} run{'s' * (len(todo) != 1)} on the {executor.describe()}")
        with _progress(progress and bool(todo)) as bar:
            grid_task = bar.add_task("runs", total=len(configs), completed=len(results)) \
                if bar else None
            for outcome in executor.run(todo, data_dir=data_dir, progress=progress, bar=bar,
                                        datasets=datasets, notes=notes):
                results[outcome.index] = _report(outcome, len(configs), say)
                if bar:
                    bar.advance(grid_task)
    return [results[i] for i in sorted(results)]


def _report(outcome, total: int, say) -> RunResult:
    config, summary = outcome.config, outcome.summary
    head = f"[{outcome.index + 1}/{total}] {where(config)}"
    if summary is None:
        say(f"{head}: LOST ({outcome.error.splitlines()[0]}); the next invocation redoes it")
        return RunResult(config, outcome.run_dir, "lost", {}, outcome.error)
    host = summary.get("worker", {}).get("host") if summary["worker"]["executor"] != "local" \
        else None
    loss = summary["loss"]
    say(f"{head}: {summary['metric']} accuracy {summary['accuracy']:.4f}, "
        f"loss {'nan' if loss is None else f'{loss:.4f}'} ({summary['wall_time_s']:.1f} s"
        f"{f' on {host}' if host else ''})")
    if summary.get("non_finite"):
        say(f"{head}: warning: training diverged ({', '.join(summary['non_finite'])} not "
            "finite, stored as null); try a smaller --lr")
    return RunResult(config, outcome.run_dir, "done", summary)


def where(config: RunConfig) -> str:
    """``experiment/label/seedN (impl)``: a run as progress lines name it."""
    impl = "" if config.impl == "normlab" else f" [{config.impl}]"
    return f"{config.experiment}/{config.slug}/seed{config.seed}{impl}"


def _check_backend(configs: list[RunConfig]) -> None:
    import keras

    running = keras.backend.backend()
    other = sorted({c.backend for c in configs} - {running})
    if other:
        raise RunnerError(
            f"Invalid `backend`: expected the backend Keras runs on in this process "
            f"({running}). Received: backend={other[0]!r}. Run it in a new process with "
            f"KERAS_BACKEND={other[0]} (the normlab command does this for --backend).")


class _progress:
    """Rich progress bars on stderr, or None when off or rich is missing."""

    def __init__(self, enabled: bool):
        from normlab.lab.errors import available

        self.bar = None
        if enabled and available("rich"):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
