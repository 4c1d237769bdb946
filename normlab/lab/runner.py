"""Run a grid of configurations x seeds, one directory per run, resumable.

Layout: ``OUT/<experiment>/<config slug>/seed<N>/`` holding

- ``config.json``  -- the :class:`~normlab.lab.experiments.RunConfig`, written first;
- ``metrics.jsonl`` -- one line per epoch (train and test metrics, seconds);
- ``summary.json`` -- final metrics, parameter counts, wall time, backend and
  versions; written last and atomically (temporary file + ``os.replace``).

A run directory with a ``summary.json`` is finished and is skipped on a rerun;
one without it (a run killed mid-way) is wiped and redone. So killing a grid
(even with ``kill -9``) loses at most the run in flight.

Seeding: ``keras.utils.set_random_seed(seed)`` before each model is built (Python,
NumPy and backend RNGs: weights, dropout) and a ``numpy`` generator seeded with
``seed`` for the data order, identical on every backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from normlab.lab.experiments import Experiment, RunConfig

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"


class RunnerError(RuntimeError):
    """A grid cannot be run as asked (e.g. a run directory holds another configuration)."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run_grid` did for one run: ``status`` is "done", "skipped" or "lost"."""

    config: RunConfig
    run_dir: Path
    status: str
    summary: dict
    error: str = ""


def write_json_atomic(path: Path, obj) -> None:
    """Writes JSON to a temporary file in the same folder, fsyncs it, then renames it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_dir_for(out: str | os.PathLike, config: RunConfig) -> Path:
    """Where the run for ``config`` lives under ``out``."""
    return Path(out) / config.experiment / config.slug / f"seed{config.seed}"


def read_finished(run_dir: Path) -> dict | None:
    """The run's summary if it finished, else None."""
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def run_grid(runs: Experiment | list[RunConfig], out: str | os.PathLike = "runs", *,
             data_dir: str | os.PathLike | None = None, progress: bool = True,
             console=None, executor=None) -> list[RunResult]:
    """Runs every configuration not finished yet under ``out``; returns one result per run.

    Args:
        runs: an Experiment (all its configurations x seeds) or a list of RunConfigs.
        out: root folder of the run directories.
        data_dir: passed to ``load_dataset`` (where MNIST etc. are found).
        progress: show rich progress bars (runs and steps).
        console: a ``rich.console.Console`` for messages; default: stderr.
        executor: where runs execute, from :func:`normlab.lab.executors.make_executor`;
            default: one after another in this process. With the Ray executor a run
            whose worker died comes back with status "lost" (and no summary).

    Results are in grid order; ``status`` is "done", "skipped" (finished earlier)
    or "lost".
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from normlab.lab.executors import LocalExecutor

    executor = executor or LocalExecutor()
    configs = runs.grid() if isinstance(runs, Experiment) else list(runs)
    for config in configs:  # refuse before training anything, not half-way through
        if read_finished(run_dir_for(out, config)) is not None:
            _check_same_config(run_dir_for(out, config), config)
    console = console or Console(stderr=True)
    results: dict[int, RunResult] = {}
    todo = []
    for i, config in enumerate(configs):
        run_dir = run_dir_for(out, config)
        summary = read_finished(run_dir)
        if summary is None:
            todo.append((config, run_dir, i))
        else:
            results[i] = RunResult(config, run_dir, "skipped", summary)
            console.print(f"[{i + 1}/{len(configs)}] {_where(config)}: finished earlier, skipped",
                          soft_wrap=True)
    if todo and not isinstance(executor, LocalExecutor):
        console.print(f"{len(todo)} runs on the {executor.describe()}", soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        grid_task = bar.add_task("runs", total=len(configs), completed=len(results))
        for outcome in executor.run(todo, data_dir=data_dir, progress=progress,
                                    bar=bar if progress else None):
            config, summary, i = outcome.config, outcome.summary, outcome.index
            where = f"[{i + 1}/{len(configs)}] {_where(config)}"
            if summary is None:
                results[i] = RunResult(config, outcome.run_dir, "lost", {}, outcome.error)
                console.print(f"{where}: LOST ({outcome.error.splitlines()[0]}); "
                              "the next invocation redoes it", soft_wrap=True, markup=False)
            else:
                results[i] = RunResult(config, outcome.run_dir, "done", summary)
                host = summary.get("worker", {}).get("host")
                console.print(f"{where}: {summary['metric']} accuracy {summary['accuracy']:.4f}, "
                              f"loss {summary['loss']:.4f} ({summary['wall_time_s']:.1f} s"
                              f"{f' on {host}' if host else ''})", soft_wrap=True, markup=False)
            bar.advance(grid_task)
    return [results[i] for i in sorted(results)]


def _where(config: RunConfig) -> str:
    return f"{config.experiment}/{config.slug}/seed{config.seed}"


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    try:
        stored = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        stored = None
    if stored != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if (stored or {}).get(k) != v)
        raise RunnerError(
            f"Invalid `out`: expected {run_dir} to hold a run of the same configuration. "
            f"Received: a finished run whose config differs in {', '.join(changed) or 'format'}. "
            "Pass another --out, or delete that run directory to redo it."
        )


def split_data(config: RunConfig, dataset) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_eval, y_eval) for the config's protocol and subsets.

    ``standard`` trains on the train split and evaluates on the test split;
    ``tutorial`` trains on the test split (as the tutorials did) and evaluates
    on the unused train split.
    """
    train = (dataset.x_train, dataset.y_train)
    test = (dataset.x_test, dataset.y_test)
    if config.protocol == "tutorial":
        train, test = test, train
    n_train = config.train_subset or len(train[1])
    n_test = config.test_subset or len(test[1])
    return train[0][:n_train], train[1][:n_train], test[0][:n_test], test[1][:n_test]


def run_one(config: RunConfig, run_dir: Path, dataset, *, on_step=None, on_total=None,
            worker: dict | None = None, grid_index: int | None = None) -> dict:
    """Trains and evaluates one configuration in ``run_dir`` (wiped first); returns the summary.

    ``worker`` (where the run executed; default: this process) and ``grid_index``
    (its position in the grid, which orders the report's rows) go into the summary.
    """
    import keras

    from normlab.lab.models import build_model, parameter_counts

    start = time.perf_counter()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / CONFIG, config.to_dict())

    x_train, y_train, x_test, y_test = split_data(config, dataset)
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    if on_total:
        on_total(total_steps)

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.norms, dataset.input_shape, dataset.num_classes, arch=config.arch)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [_step_callback(on_step)] if on_step else []
    order_rng = np.random.default_rng(config.seed)

    steps, epoch, fit_times, history = 0, 0, [], {}
    while steps < total_steps:
        epoch += 1
        order = order_rng.permutation(len(y_train))
        order = order[: (total_steps - steps) * config.batch_size]
        t0 = time.perf_counter()
        history = model.fit(x_train[order], y_train[order], batch_size=config.batch_size,
                            epochs=1, shuffle=False, verbose=0, callbacks=callbacks).history
        fit_times.append(time.perf_counter() - t0)
        steps += math.ceil(len(order) / config.batch_size)
        t0 = time.perf_counter()
        test = model.evaluate(x_test, y_test, batch_size=config.eval_batch_size, verbose=0,
                              return_dict=True)
        line = dict(epoch=epoch, steps=steps, examples=int(len(order)),
                    train_loss=float(history["loss"][-1]),
                    train_accuracy=float(history["accuracy"][-1]),
                    test_loss=float(test["loss"]), test_accuracy=float(test["accuracy"]),
                    fit_seconds=fit_times[-1], eval_seconds=time.perf_counter() - t0)
        with open(run_dir / METRICS, "a") as fh:
            fh.write(json.dumps(line) + "\n")

    train_mode = evaluate_train_mode(model, x_test, y_test, config.batch_size) \
        if config.train_mode_eval else {"loss": None, "accuracy": None}
    primary, metric = (("train", "train (tutorial protocol)") if config.protocol == "tutorial"
                       else ("test", "test"))
    summary = dict(
        config=config.to_dict(), metric=metric,
        accuracy=line[f"{primary}_accuracy"], loss=line[f"{primary}_loss"],
        train_accuracy=line["train_accuracy"], train_loss=line["train_loss"],
        test_accuracy=line["test_accuracy"], test_loss=line["test_loss"],
        train_mode_accuracy=train_mode["accuracy"], train_mode_loss=train_mode["loss"],
        epochs_run=epoch, steps=steps, examples_seen=int(steps * config.batch_size),
        train_examples=int(len(y_train)), test_examples=int(len(y_test)),
        params=parameter_counts(model),
        seconds_per_epoch=float(np.mean(fit_times)), fit_seconds=float(np.sum(fit_times)),
        first_epoch_seconds=fit_times[0], wall_time_s=time.perf_counter() - start,
        backend=keras.backend.backend(), versions=_versions(),
        worker=worker or dict(executor="local", host=platform.node(), pid=os.getpid()),
        grid_index=grid_index,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_json_atomic(run_dir / SUMMARY, summary)
    return summary


def evaluate_train_mode(model, x, y, batch_size: int) -> dict:
    """Test loss and accuracy with BatchNorm-like layers in training mode.

    The model is called with ``training=True`` (so batch statistics are used, over
    test batches of ``batch_size``) but with dropout disabled; every non-trainable
    variable (moving averages, RNG state) is restored afterwards.
    """
    import keras

    saved = [np.array(v.value) for v in model.non_trainable_variables]
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        wrapper = _TrainModeModel(model)
        wrapper.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        result = wrapper.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
    return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}


def _train_mode_class():
    import keras

    class TrainModeModel(keras.Model):
        """Calls the wrapped model with ``training=True`` whatever the caller asks."""

        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, inputs, training=None):
            return self.inner(inputs, training=True)

    return TrainModeModel


def _TrainModeModel(inner):  # noqa: N802 - builds the class lazily (Keras imported late)
    return _train_mode_class()(inner)


def _step_callback(on_step):
    import keras

    class StepCallback(keras.callbacks.Callback):
        async_safe = True  # only advances a progress bar: let Keras dispatch it off-thread

        def on_train_batch_end(self, batch, logs=None):
            on_step()

    return StepCallback()


def _git_revision() -> str:
    """The normlab checkout's commit (``+dirty`` with uncommitted changes), or "" if unknown."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "normlab"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}+dirty" if head and dirty else head


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version(), "normlab_git": _git_revision()}
    for name in ("keras", "numpy", "jax", "jaxlib", "torch", "tensorflow", "tensorflow-cpu"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions
