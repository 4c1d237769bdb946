"""Run directories: where each run lives, how it is written, and who may write.

Layout: ``OUT/<experiment>/<label>/<variant>/seed<N>/`` where ``variant`` is
``<backend>-<impl>-<hash of every setting that changes the result>`` (see
:attr:`RunConfig.variant <normlab.lab.experiments.RunConfig.variant>`), so
runs with other settings never share a directory. Each holds

- ``config.json`` -- the :class:`~normlab.lab.experiments.RunConfig`, written first;
- ``metrics.jsonl`` -- one line per epoch, rewritten whole after each epoch;
- ``summary.json`` -- final metrics, written last. A directory with it is finished;
- ``error.txt`` -- only for a run lost with its worker (Ray executor).

Every file is written atomically (temporary file in the same folder, fsync,
rename) with the permissions of an ordinary new file (``0666 & ~umask``). JSON
files are standard JSON: a non-finite number (a diverged loss) is written as
``null`` and listed under ``non_finite``. :func:`begin_run` is the only place a
run directory is wiped.

:class:`OutputLock` gives one process at a time an output folder, and
:func:`plan` says, for every run of a grid, whether it will be run, reused
(finished earlier), copied (finished under another experiment with the same
settings and seed, or a model without norms under the other implementation)
or redone (unfinished). This module needs no deep-learning framework.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from normlab.lab.consistency import disagreement
from normlab.lab.errors import LabError
from normlab.lab.experiments import IMPLS, JSONDict, RunConfig, has_summary_types

CONFIG, METRICS, SUMMARY, ERROR = "config.json", "metrics.jsonl", "summary.json", "error.txt"
LOCK, REPORT = ".normlab.lock", "report"  # REPORT: the report's folder in an output folder


class StoreError(LabError):
    """The output folder cannot be used: not a folder, not writable, or holding other runs."""


class LockedError(StoreError):
    """Another process holds the output folder."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str | bytes) -> None:
    """Writes ``text`` to a temporary file beside ``path``, fsyncs it, then renames it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; match an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_json(obj: Any, path: str = "", found: list[str] | None = None) -> Any:
    """``obj`` with NaN and infinities replaced by None; their paths appended to ``found``."""
    if isinstance(obj, dict):
        return {k: finite_json(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        if found is not None:
            found.append(path)
        return None
    return obj


def dumps(obj: Any) -> str:
    """Standard JSON (never NaN or Infinity tokens), indented, keys sorted."""
    return json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    """:func:`write_text_atomic` of standard JSON."""
    write_text_atomic(path, dumps(obj))


# ---------------------------------------------------------------------- run directories


def run_dir_for(out: str | os.PathLike[str], config: RunConfig) -> Path:
    """Where the run for ``config`` lives under ``out``."""
    return Path(out) / config.experiment / config.slug / config.variant / f"seed{config.seed}"


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


#: What the report reads from every summary (older runs lacked the config's impl and backend).
_SUMMARY_KEYS = ("config", "metric", "accuracy", "params", "wall_time_s", "train_examples",
                 "test_examples")
_CONFIG_KEYS = ("experiment", "label", "series", "sweep", "x", "norms", "seed", "dataset", "protocol",
                "arch", "epochs", "max_steps", "batch_size", "learning_rate", "train_subset")


def read_finished(run_dir: Path) -> JSONDict | None:
    """The run's summary if it finished, else None (also for a summary without the keys a
    finished run writes or with a value of another type, e.g. one edited by hand: the run
    is redone, the report skips it and lists it)."""
    summary = read_json(Path(run_dir) / SUMMARY)
    if not (isinstance(summary, dict) and all(k in summary for k in _SUMMARY_KEYS)
            and isinstance(summary["config"], dict) and isinstance(summary["params"], dict)
            and all(k in summary["config"] for k in _CONFIG_KEYS)
            and all(k in summary["params"] for k in ("trainable", "non_trainable"))):
        return None
    return summary if has_summary_types(summary) else None


def begin_run(run_dir: Path, config: RunConfig) -> None:
    """Wipes ``run_dir`` (an interrupted earlier attempt) and writes ``config.json``."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / CONFIG, config.to_dict())


def write_metrics(run_dir: Path, lines: list[JSONDict]) -> None:
    """Rewrites ``metrics.jsonl`` with every epoch so far (never a half-written line)."""
    text = "".join(json.dumps(finite_json(line), allow_nan=False) + "\n" for line in lines)
    write_text_atomic(Path(run_dir) / METRICS, text)


def finish_run(run_dir: Path, summary: JSONDict) -> JSONDict:
    """Writes ``summary.json`` (marks the run finished); returns the summary as written."""
    found: list[str] = []
    clean: dict[str, Any] = finite_json(summary, found=found)
    if found:
        clean["non_finite"] = found
    write_json_atomic(Path(run_dir) / SUMMARY, clean)
    return clean


def write_run(run_dir: Path, config: RunConfig, files: dict[str, str], summary: JSONDict) -> JSONDict:
    """Writes a run trained elsewhere (a Ray worker): its files, then the summary."""
    begin_run(run_dir, config)
    for name, text in files.items():
        if name not in (CONFIG, SUMMARY):
            write_text_atomic(Path(run_dir) / name, text)
    return finish_run(run_dir, summary)


def write_error(run_dir: Path, config: RunConfig, error: str) -> None:
    """Leaves a lost run unfinished (no summary) with ``error.txt`` saying why."""
    begin_run(run_dir, config)
    write_text_atomic(Path(run_dir) / ERROR, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} run lost, "
                      f"to be redone by the next invocation:\n{error}\n")


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Planned:
    """One run of a grid and what will happen to it: "run", "reuse", "redo" or
    "copy" (from ``source``, the same run finished elsewhere, see :func:`find_twin`)."""

    config: RunConfig
    run_dir: Path
    action: str
    index: int
    summary: JSONDict | None = None
    source: Path | None = None


def plan(configs: list[RunConfig], out: str | os.PathLike[str]) -> list[Planned]:
    """What running ``configs`` under ``out`` would do, run by run (reads files only).

    "reuse": finished earlier with the same settings; "copy": not finished here,
    but the same settings and seed finished under another experiment of
    ``out`` (:func:`find_twin`), copied rather than trained again; "redo": a
    directory without ``summary.json`` (interrupted, or lost with its worker),
    wiped and run again; "run": no directory yet.

    Raises:
        StoreError: a finished run's ``config.json`` disagrees with its settings or
            its seed folder, or its files with each other (edited by hand, or copied
            from another run's folder), before anything runs.
    """
    planned = []
    for index, config in enumerate(configs):
        run_dir = run_dir_for(out, config)
        summary = read_finished(run_dir)
        if summary is not None:
            stored = read_json(run_dir / CONFIG)
            expected = config.run_fields()  # a folder's own seed too
            changed = sorted(k for k, v in expected.items() if isinstance(stored, dict) and stored.get(k) != v)
            why = f"config.json differs in {', '.join(changed)}" if changed else disagreement(run_dir, summary, stored)
            if why:
                raise StoreError(
                    f"Invalid `out`: expected {run_dir} to hold a run with its directory's "
                    f"settings. Received: a finished run whose {why}. Delete that run directory to redo it.")
            planned.append(Planned(config, run_dir, "reuse", index, summary))
        elif (twin := find_twin(out, config)) is not None:
            planned.append(Planned(config, run_dir, "copy", index, twin[1], twin[0]))
        else:
            planned.append(Planned(config, run_dir, "redo" if run_dir.exists() else "run", index))
    return planned


def find_twin(out: str | os.PathLike[str], config: RunConfig) -> tuple[Path, JSONDict] | None:
    """``(run directory, summary)`` of a finished run under ``out`` with the same
    settings and seed as ``config`` under another experiment (``compare``'s
    GroupNorm is ``sweep groups``' G=5), or None. Its directory has ``config``'s
    variant, its ``config.json`` the same result fields and seed, and its files
    agree (one edited by hand or copied from another seed's folder is not used). A
    model without a norm is the same under every implementation: its run under
    another one (``--impl keras`` after ``--impl normlab``) is a twin too, in any
    experiment."""
    others = [] if config.has_norm else [dataclasses.replace(config, impl=i) for i in IMPLS if i != config.impl]
    for twin in [config, *others]:
        expected = twin.run_fields()
        for candidate in sorted(Path(out).glob(f"*/*/{twin.variant}/seed{config.seed}")):
            if twin is config and candidate.parents[2].name == config.experiment:  # its own directory
                continue
            summary = read_finished(candidate)
            stored = read_json(candidate / CONFIG)
            if summary is not None and isinstance(stored, dict) and all(
                    stored.get(k) == v for k, v in expected.items()) and not disagreement(candidate, summary, stored):
                return candidate, summary
    return None


def copy_run(source: Path, run_dir: Path, config: RunConfig, out: str | os.PathLike[str],
             grid_index: int | None = None) -> JSONDict:
    """Writes ``source`` (a finished run of ``config``'s settings and seed, see
    :func:`find_twin`) as ``config``'s run: its files, with ``config``'s names in
    ``config.json`` and the summary, which records where it came from
    (``copied_from``, relative to ``out``) and the run's ``grid_index`` in its
    own grid. Returns the summary as written."""
    source = Path(source)
    files = {p.name: p.read_text() for p in sorted(source.iterdir())
             if p.is_file() and p.name not in (CONFIG, SUMMARY, ERROR) and not p.name.startswith(".")}
    summary = read_finished(source)
    if summary is None:
        raise StoreError(f"Invalid `source`: expected a finished run. Received: {source}, without a "
                         "valid summary.json. Run the grid again: it trains the run instead.")
    summary = {**summary, "config": config.to_dict(), "grid_index": grid_index,
               "copied_from": source.relative_to(out).as_posix()}
    return write_run(run_dir, config, files, summary)


def check_out(out: str | os.PathLike[str]) -> Path:
    """Checks that ``out`` is (or can be made) a writable folder, leaving nothing behind.

    ``os.access`` answers yes to root everywhere (a read-only mount, ``/proc``),
    so a folder is also made and removed in the nearest existing one.

    Raises:
        StoreError: ``out`` or a parent is a file, or the folder is not writable.
    """
    path = Path(out).expanduser()
    fix = "Pass --out with a folder you can write to."
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise StoreError(f"Invalid `out`: expected a folder. Received: out='{out}' {what}. {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its nearest existing parent, {probe})"
        raise StoreError(f"Invalid `out`: expected a folder you can write to. Received: "
                         f"out='{out}'{where} is not writable. {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normlab-probe-", dir=probe))
    except OSError as exc:
        where = "" if probe == path else f" (in its nearest existing parent, {probe})"
        raise StoreError(f"Invalid `out`: expected a folder you can write to. Received: out='{out}', "
                         f"where no folder can be made{where}: {exc.strerror or exc}. {fix}") from None
    return path


# -------------------------------------------------------------------------------- lock


class OutputLock:
    """An exclusive lock on an output folder, held while a grid runs.

    Uses ``flock`` on ``OUT/.normlab.lock`` (released by the kernel if the process
    dies, so a killed run never leaves a stale lock); the file names the holder.

    Example:
        >>> import tempfile
        >>> from normlab.lab.store import OutputLock
        >>> out = tempfile.mkdtemp()
        >>> with OutputLock(out):
        ...     OutputLock(out).acquire()
        Traceback (most recent call last):
        ...
        normlab.lab.store.LockedError: ...
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out) / LOCK
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as the lock file says (or "another process")."""
        try:
            info = json.loads(self.path.read_text())
            return (f"process {info['pid']} on {info['host']} (since {info['since']}: "
                    f"{info['command']})")
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> "OutputLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockedError(
                f"Invalid `out`: expected a folder no other normlab is using. Received: "
                f"out='{self.path.parent}' is in use by {self.holder()}. Wait for it to "
                "finish (rerunning then reuses its runs), or pass another --out.") from None
        info = dict(pid=os.getpid(), host=socket.gethostname(),
                    since=time.strftime("%Y-%m-%d %H:%M:%S"),
                    command=" ".join(["normlab", *sys.argv[1:]])[:300])
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def check(self) -> None:
        """Raises :class:`LockedError` if another process holds the lock (takes nothing)."""
        if self.path.exists():
            self.acquire().release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------ reading


def load_runs(runs_dir: str | os.PathLike[str]) -> tuple[list[JSONDict], list[Path]]:
    """Finished run summaries (each with its ``run_dir``) and unfinished or unreadable run
    directories: also a ``seed<N>`` folder with a summary but no ``config.json``, which every
    run writes first, and a run whose files disagree (:mod:`normlab.lab.consistency`)."""
    finished, unfinished = [], []
    run_dirs = {p.parent for p in Path(runs_dir).rglob(CONFIG)} | {
        p.parent for p in Path(runs_dir).rglob(SUMMARY) if re.fullmatch(r"seed\d+", p.parent.name)}
    for run_dir in sorted(run_dirs):
        stored = read_json(run_dir / CONFIG)
        summary = read_finished(run_dir) if isinstance(stored, dict) else None
        if summary is None or disagreement(run_dir, summary, stored):
            unfinished.append(run_dir)
        else:
            finished.append({**summary, "run_dir": str(run_dir)})
    return finished, unfinished


def disagreeing(run_dir: str | os.PathLike[str]) -> str:
    """Why a finished run's files disagree (:func:`~normlab.lab.consistency.disagreement`), else ""."""
    stored = read_json(Path(run_dir) / CONFIG)
    summary = read_finished(Path(run_dir)) if isinstance(stored, dict) else None
    return "" if summary is None else disagreement(run_dir, summary, stored)
