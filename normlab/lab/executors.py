"""Where the lab's runs execute: one after another in this process, or as Ray tasks.

:func:`~normlab.lab.runner.run_grid` decides which runs are still to do and hands
them to an executor; results land in the same run directories either way, so
resuming (``summary.json`` marks a finished run) and ``normlab report`` work
unchanged. Executors train with :mod:`normlab.lab.training` and write with
:mod:`normlab.lab.store`; neither depends back on this module.

- :class:`LocalExecutor` (``--executor local``, the default) trains each run in
  this process, one after another, with a progress bar per run.
- :class:`RayExecutor` (``--executor ray --address ADDRESS``) submits each run as
  one Ray task that declares its CPUs (and GPUs); Ray runs as many at once as the
  cluster's resources allow. The worker trains in a scratch folder and returns the
  run's files; this process writes them into the run directory (config and metrics
  first, ``summary.json`` last and atomically), so the workers need no shared file
  system with the driver. A worker that dies mid-run (killed, out of memory, node
  lost) costs only its run: the others go on, the lost run is listed with its error
  in ``error.txt`` of its run directory, and the next invocation of the same command
  redoes it. An exception raised by the training code itself (a missing dataset, a
  bad norm spec) is the same for every run, so it stops the grid, as it does locally.

Example:
    >>> from normlab.lab.executors import make_executor
    >>> make_executor("local")
    LocalExecutor()
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from normlab.lab import store, training
from normlab.lab.errors import ADDRESS, ADDRESS_FIX, LabError, empty_value
from normlab.lab.experiments import RunConfig

EXECUTORS = ("local", "ray")

#: The smallest amount of a resource a Ray task can declare (Ray counts in these units).
RESOURCE_UNIT = 1e-4


def _resource(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


class ExecutorError(LabError, RuntimeError):
    """The executor cannot start: Ray is missing, or no cluster answers at the address."""


@dataclasses.dataclass
class Outcome:
    """One finished or lost run, as an executor reports it."""

    config: RunConfig
    run_dir: Path
    index: int  # position in the grid
    summary: dict | None  # None when the run was lost
    error: str = ""


@dataclasses.dataclass
class LocalExecutor:
    """Trains each run in this process, one after another (the default)."""

    name = "local"

    def run(self, todo: list[tuple[RunConfig, Path, int]], *, data_dir=None,
            progress: bool = True, bar=None, datasets: dict | None = None,
            notes: dict | None = None) -> Iterator[Outcome]:
        """Trains each run; ``datasets`` ({name: Dataset}) are used instead of loading them."""
        from normlab.lab.data import load_dataset

        datasets = dict(datasets or {})
        for config, run_dir, index in todo:
            if config.dataset not in datasets:
                datasets[config.dataset] = load_dataset(config.dataset, data_dir=data_dir,
                                                        progress=progress)
            hooks: dict[str, Any] = {}
            if bar is not None:
                task = bar.add_task(f"{config.label} seed {config.seed}", total=None)
                hooks = dict(on_step=lambda: bar.advance(task),
                             on_total=lambda n: bar.update(task, total=n))
            try:
                summary = training.run_one(config, run_dir, datasets[config.dataset],
                                           grid_index=index, notes=notes, **hooks)
            finally:
                if bar is not None:
                    bar.remove_task(task)
            yield Outcome(config, run_dir, index, summary)

    def describe(self) -> str:
        return "local executor (one run after another in this process)"

    def check(self) -> None:
        """Nothing to check before the first run."""


@dataclasses.dataclass
class RayExecutor:
    """Runs each run as a Ray task on a local or existing Ray cluster.

    Args:
        address: ``"local"`` starts a Ray instance on this machine (stopped at the
            end); ``"auto"`` or ``"HOST:6379"`` joins a running cluster (``ray start
            --head`` prints its address); ``"ray://HOST:10001"`` connects through
            Ray Client. None: ``$RAY_ADDRESS`` if set, else ``"local"``. Default: None.
        cpus_per_run: CPUs each run declares (Ray also caps its threads to it);
            runs at once = cluster CPUs // this. Default: 1.
        gpus_per_run: GPUs each run declares (fractions share a GPU). Default: 0.
        retries: times Ray retries a run whose worker died; 0 leaves it to the next
            invocation. Default: 0.
        runtime_env: extra Ray runtime environment for the workers (e.g.
            ``{"pip": ["normlab[lab]"]}`` on a cluster without normlab installed);
            ``KERAS_BACKEND`` is always set to this process' backend. Default: None.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    retries: int = 0
    runtime_env: dict | None = None

    name = "ray"

    def __post_init__(self):
        env_vars = self.runtime_env.get("env_vars", {}) if isinstance(self.runtime_env, dict) else {}
        checks = (
            # (Ray counts resources in units of 1e-4: a smaller fraction fails at submission)
            ("cpus_per_run", _resource(self.cpus_per_run) and self.cpus_per_run >= RESOURCE_UNIT,
             f"a finite number >= {RESOURCE_UNIT:g}", "Pass --cpus-per-run 1."),
            ("gpus_per_run", _resource(self.gpus_per_run) and (self.gpus_per_run == 0 or
                                                               self.gpus_per_run >= RESOURCE_UNIT),
             f"0 or a finite number >= {RESOURCE_UNIT:g}", "Pass --gpus-per-run 0."),
            ("retries", isinstance(self.retries, int) and self.retries >= 0, "an int >= 0",
             "Pass --retries 0 to leave lost runs to the next invocation."),
            ("runtime_env", self.runtime_env is None or isinstance(self.runtime_env, dict),
             "a dict (JSON object)", 'Pass e.g. --ray-runtime-env \'{"pip": ["normlab[lab]"]}\'.'),
            ("runtime_env", isinstance(env_vars, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()),
             'its "env_vars" a JSON object of strings', 'Pass e.g. \'{"env_vars": {"OMP_NUM_THREADS": "1"}}\'.'),
        )
        for arg, ok, expected, fix in checks:
            if not ok:
                raise ValueError(f"Invalid `{arg}`: expected {expected}. "
                                 f"Received: {arg}={getattr(self, arg)!r}. {fix}")

    def resolved_address(self) -> str:
        return self.address or os.environ.get("RAY_ADDRESS") or "local"

    def describe(self) -> str:
        where = self.resolved_address()
        where = "a local Ray instance" if where == "local" else f"the Ray cluster at {where}"
        gpus = f", {self.gpus_per_run:g} GPU" if self.gpus_per_run else ""
        return f"Ray executor on {where} ({self.cpus_per_run:g} CPU{gpus} per run)"

    def check(self) -> None:
        """What can be checked before the first run, in seconds: Ray imports, takes
        the runtime environment, and a cluster address (``HOST:PORT``,
        ``ray://HOST:PORT``) answers.

        Raises:
            ExecutorError: Ray is not installed, or nothing listens at the address.
            ValueError: Ray refuses the runtime environment.
        """
        ray = _import_ray()
        if self.runtime_env:
            try:
                ray.runtime_env.RuntimeEnv(**self.runtime_env)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"Invalid `runtime_env`: expected a runtime environment Ray takes. Received: "
                    f"runtime_env={self.runtime_env!r} (Ray: {str(exc).splitlines()[0] if str(exc) else exc!r}). "
                    "See https://docs.ray.io/en/latest/ray-core/handling-dependencies.html.") from None
        _probe(self.resolved_address())

    def run(self, todo: list[tuple[RunConfig, Path, int]], *, data_dir=None,
            progress: bool = True, bar=None, datasets: dict | None = None,
            notes: dict | None = None) -> Iterator[Outcome]:
        """Submits every run; workers load their own data (``datasets`` is not sent)."""
        ray = _import_ray()
        backend = next((c.backend for c, _, _ in todo if c.backend), "")
        if not backend:
            import keras

            backend = keras.backend.backend()
        started = _connect(ray, self.resolved_address())
        try:
            if started and self.resolved_address() == "local":
                self._check_fits(ray.cluster_resources())
            yield from self._run(ray, backend, todo, data_dir, bar, notes)
        finally:
            if started:
                ray.shutdown()

    def _check_fits(self, resources: dict[str, float]) -> None:
        """Raises where a run asks more than the Ray instance this process started
        has (its tasks would wait for ever; a cluster's autoscaler may add nodes)."""
        for arg, key, want in (("cpus_per_run", "CPU", self.cpus_per_run), ("gpus_per_run", "GPU", self.gpus_per_run)):
            have = resources.get(key, 0.0)
            if want > have:
                raise ExecutorError(
                    f"Invalid `{arg}`: expected at most the {have:g} {key}s of the local Ray instance. "
                    f"Received: {arg}={want:g}; a run would wait for ever. Pass --{arg.replace('_', '-')} "
                    f"{have:g} or less, or --address of a cluster that has them.")

    def _run(self, ray, backend, todo, data_dir, bar, notes) -> Iterator[Outcome]:
        env_vars = {"KERAS_BACKEND": backend}
        for name in ("NORMLAB_DATA_DIR", "NORMLAB_VERBOSE"):
            if os.environ.get(name):
                env_vars[name] = os.environ[name]
        runtime_env = dict(self.runtime_env or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
        if data_dir is not None and Path(data_dir).expanduser().is_dir():
            data_dir = str(Path(data_dir).expanduser().resolve())  # workers have another cwd
        remote = ray.remote(train_in_worker)
        options = dict(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                       max_retries=self.retries, retry_exceptions=False, runtime_env=runtime_env)
        data_dir = None if data_dir is None else str(data_dir)
        pending = {}
        for config, run_dir, index in todo:
            ref = remote.options(name=task_name(config), **options).remote(
                config.to_dict(), data_dir, index, notes)
            pending[ref] = (config, run_dir, index)
        task = bar.add_task(f"{len(todo)} runs on Ray", total=None) if bar is not None else None
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                config, run_dir, index = pending.pop(ref)
                try:
                    files, summary = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the training code raised
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                    raise cause from None
                except ray.exceptions.RayError as exc:  # the worker, its node or the task died
                    error = f"{type(exc).__name__}: {exc}"
                    store.write_error(run_dir, config, error)
                    yield Outcome(config, run_dir, index, None, error)
                    continue
                summary = store.write_run(run_dir, config, files, summary)
                yield Outcome(config, run_dir, index, summary)
        finally:
            for ref in pending:  # interrupted or stopped by an error: free the cluster
                ray.cancel(ref, force=True)
            if task is not None:
                bar.remove_task(task)


def make_executor(name: str = "local", *, address: str | None = None, **options):
    """The executor called ``name`` ("local" or "ray"), checking its options."""
    if address == "":  # not None: it would mean $RAY_ADDRESS, else Ray on this machine
        raise ValueError(empty_value("address", ADDRESS, ADDRESS_FIX))
    if name == "local":
        given = {k: v for k, v in dict(address=address, **options).items() if v is not None}
        if given:
            key = next(iter(given))
            raise ValueError(
                f"Invalid `{key}`: it applies only to --executor ray. Received: "
                f"{key}={given[key]!r} with executor='local'. Add --executor ray, or drop it.")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, **{k: v for k, v in options.items() if v is not None})
    raise ValueError(f"Invalid `executor`: expected one of {', '.join(EXECUTORS)}. "
                     f"Received: executor={name!r}. Pass --executor local or --executor ray.")


def task_name(config: RunConfig) -> str:
    """The Ray task name of a run (shown by ``ray list tasks`` and as the worker's process title)."""
    return f"normlab:{config.experiment}/{config.slug}/seed{config.seed}"


def train_in_worker(config: dict, data_dir: str | None, grid_index: int | None = None,
                    notes: dict | None = None) -> tuple[dict[str, str], dict]:
    """The body of a Ray task: trains one run in a scratch folder; returns its files and summary."""
    run_config = RunConfig(**config)
    dataset = _dataset(run_config.dataset, data_dir)
    with tempfile.TemporaryDirectory(prefix="normlab-run-") as scratch:
        run_dir = Path(scratch) / "run"
        summary = training.run_one(run_config, run_dir, dataset, grid_index=grid_index,
                                   notes=notes, worker=dict(executor="ray", host=platform.node(),
                                                            pid=os.getpid()))
        files = {p.name: p.read_text() for p in run_dir.iterdir() if p.name != store.SUMMARY}
    return files, summary


_DATASETS: dict[tuple, object] = {}  # per worker process: Ray reuses workers across tasks


def _dataset(name: str, data_dir: str | None):
    from normlab.lab.data import load_dataset

    key = (name, data_dir)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, data_dir=data_dir, progress=False)
    return _DATASETS[key]


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(
            "The Ray executor needs Ray. Received: executor='ray' but `import ray` failed "
            f"({exc}). Install it with: pip install 'normlab[ray]'."
        ) from None
    return ray


#: Seconds :func:`_probe` waits for a cluster's address to accept a connection.
CONNECT_TIMEOUT_S = 10.0


def _address_error(address: str, cause: str) -> ExecutorError:
    return ExecutorError(
        f"Invalid `address`: expected a running Ray cluster there. Received: "
        f"address={address!r} ({cause}). "
        "Start one with `ray start --head` and pass the address it prints, "
        "or pass --address local to start Ray on this machine.")


def _probe(address: str) -> None:
    """Raises unless something accepts a connection at ``address`` (``HOST:PORT``, or
    ``ray://HOST:PORT``; ``local`` and ``auto`` are Ray's to resolve): Ray itself retries
    an address where nothing listens for as long as it is let, printing warnings."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address in ("local", "auto") or address.startswith("ray://") and not (host and port.isdigit()):
        return
    if not host or not port.isdigit():
        raise ExecutorError(
            "Invalid `address`: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT. Received: "
            f"address={address!r}. Pass the address `ray start --head` printed (e.g. 10.0.0.5:6379), "
            "or --address local to start Ray on this machine.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise _address_error(address, f"no answer: {exc.strerror or exc}") from None


def _connect(ray, address: str) -> bool:
    """Starts or joins Ray; True if this call did (and so must shut it down)."""
    if ray.is_initialized():
        return False
    _probe(address)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address == "local":
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _address_error(
            address, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return True

