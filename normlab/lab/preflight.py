"""Everything that can be checked before training, checked for every run of a grid.

:func:`check` runs, cheapest first and creating nothing on disk:

1. the lab's optional dependencies the grid will need (matplotlib for the
   report, rich for progress bars, scikit-learn for the digits);
2. the output folder: a folder (or creatable), writable, not locked by
   another ``normlab``, and with no file where the report goes (``OUT/report``);
3. every configuration's model, built with its real layers (normlab's or
   Keras', per ``impl``) on the dataset's real image shape, so every norm's
   ``build`` sees its real channel count: a spec that cannot be built
   (``group(groups=3)`` on 10 channels) fails in seconds, not after training;
4. the dataset: loaded (the local executor trains on it), or only located (the
   Ray executor's workers load it). When MNIST was not asked for by name and can
   be neither found nor downloaded, the grid switches to scikit-learn's bundled
   8x8 digits, says so, and records why in every run (the report and plots
   repeat it).

Every failure is a :class:`~normlab.lab.errors.LabError` with the fix.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from normlab.lab import store
from normlab.lab.errors import FOLDER, ConfigError, available, empty_value, missing
from normlab.lab.experiments import DATASETS, Experiment
from normlab.lab.presets import replace_dataset


@dataclasses.dataclass
class Prepared:
    """A checked grid: the experiment to run (perhaps on another dataset) and its data."""

    experiment: Experiment
    datasets: dict  # name -> Dataset, loaded for the local executor
    notes: dict  # recorded in every run's summary
    data: str  # where the data comes from, in words


def check_dependencies(experiment: Experiment, *, report: bool = True,
                       progress: bool = True) -> None:
    """Raises MissingDependency for a package of the ``lab`` extra the grid needs."""
    needed = (["matplotlib"] * report + ["rich"] * progress
              + ["sklearn"] * any(c.dataset == "digits" for c in experiment.configs))
    for module in needed:
        if not available(module):
            error = missing(module)
            if module == "rich":
                error.args = (error.args[0] + " Or pass --no-progress.",)
            raise error


def check_out(out) -> None:
    """The output folder is usable, no other normlab holds it, and the report the grid ends
    with can be written in it (``OUT/report`` is no file): creates nothing."""
    if not str(out):  # Path("") is the current folder
        raise store.StoreError(empty_value("out", FOLDER, "Pass --out with a folder, e.g. --out runs."))
    path = store.check_out(out)
    report = path / store.REPORT
    if report.exists() and not report.is_dir():
        raise store.StoreError(f"Invalid `out`: expected {report}, where the grid writes its report, to be a "
                               f"folder or not to exist. Received: out='{out}', where {report} is a file. "
                               "Remove or rename that file, or pass another --out.")
    if path.is_dir():
        store.OutputLock(path).check()


def check_models(experiment: Experiment, verbose: bool = False, *, optional_keras: bool = False,
                 say: Callable[[str], None] = print) -> Experiment:
    """Builds every distinct model of the grid once and runs it on two blank images.

    A norm that does not fit its input (3 groups of 10 channels) fails at build; one
    whose layer fails when called (Keras' own LayerNormalization(axis=1) on the torch
    backend, under ``--impl keras``) fails at the call. Either way in seconds.

    With ``optional_keras`` (``--impl normlab,keras``), a configuration Keras has no
    working layer for is dropped from the Keras side instead (said with ``say``): it
    runs with normlab's layers only. Returns the experiment that will run.
    """
    from normlab.lab.backend import import_keras

    keras = import_keras(verbose)
    seen, dropped = set(), set()
    for c in experiment.configs:
        key = (c.norms, c.arch, c.impl, c.dataset)
        if key in seen:
            continue
        seen.add(key)
        info = DATASETS[c.dataset]
        where = (f"configuration {c.label!r}: norms={c.norms!r}, impl={c.impl}, "
                 f"{c.dataset} images {'x'.join(map(str, info.shape))}")
        try:
            _check_model(keras, c, info, where)
        except ConfigError as error:
            if not (optional_keras and c.impl == "keras"):
                raise
            dropped.add(key)
            say(f"normlab: {c.label!r} runs with normlab's layers only: {error}")
    if not dropped:
        return experiment
    configs = tuple(c for c in experiment.configs
                    if (c.norms, c.arch, c.impl, c.dataset) not in dropped)
    return dataclasses.replace(experiment, configs=configs)


def _check_model(keras, c, info, where: str) -> None:
    """Builds one configuration's model and calls it, from a cleared Keras session as its
    runs build theirs (not under a global dtype policy a caller set); ConfigError if either fails."""
    import numpy as np

    from normlab.lab.models import build_model, copy_weights

    keras.backend.clear_session(free_memory=False)
    try:
        try:
            model = build_model(c.norms, info.shape, info.classes, arch=c.arch, impl=c.impl)
            if c.impl != "normlab":  # training starts it from normlab's weights
                copy_weights(build_model(c.norms, info.shape, info.classes, arch=c.arch), model)
        except ValueError as exc:
            raise ConfigError(f"{_one_line(exc)} ({where})") from None
        try:
            model(np.zeros((2, *info.shape), "float32"), training=True)
        except Exception as exc:  # noqa: BLE001 - whatever the layer raises, before training
            whose = "Keras' layer" if c.impl == "keras" else "the model"
            raise ConfigError(
                f"{whose} fails when called on the {keras.backend.backend()} backend: "
                f"{type(exc).__name__}: {_one_line(exc)} ({where}). "
                + ("Use --impl normlab for it, or another --backend." if c.impl == "keras"
                   else "Please report this as a normlab bug.")) from None
    finally:
        keras.backend.clear_session()


def _one_line(exc: Exception) -> str:
    """The error's text on one line, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = text.split("Arguments received by", 1)[0]  # Keras' echo of the call's inputs
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Exception encountered when calling") and len(lines) > 1:
        lines = lines[1:]  # Keras' wrapper line: the cause follows
    return " ".join(lines[:1] if len(" ".join(lines)) > 400 else lines)


def resolve_data(experiment: Experiment, *, data_dir=None, explicit: bool = True,
                 load: bool = True, progress: bool = True, check_dir: bool = True,
                 say: Callable[[str], None] = print) -> Prepared:
    """Loads (or, with ``load=False``, locates) the grid's datasets; may switch to digits.

    ``check_dir=False`` accepts a ``data_dir`` missing here (Ray's workers may have it).
    """
    from normlab.lab import data

    names = list(dict.fromkeys(c.dataset for c in experiment.configs))
    if data_dir is not None and all(DATASETS[name].offline for name in names):
        raise ConfigError(f"Invalid `data_dir`: the {' and '.join(names)} dataset needs no files, so "
                          f"the folder would be ignored. Received: data_dir={str(data_dir)!r}. Drop "
                          "--data-dir, or pass --dataset mnist (or another downloaded dataset) to use it.")
    datasets, notes, where = {}, {}, []
    for name in names:
        if not load:
            if check_dir and not DATASETS[name].offline:
                data.check_data_dir(name, data_dir)
            found = data.locate(name, data_dir, verify=True)
            if not found and data_dir is not None and not DATASETS[name].offline:
                if check_dir:  # the error a run would give: a folder given is used alone
                    data.load_dataset(name, data_dir=data_dir, download=False)
                found = f"data_dir: {data_dir} (on the workers)"
            fallback = ("" if found or explicit or name != "mnist" else
                        ", or if that fails, the runs use the bundled 8x8 digits instead, "
                        f"under {experiment.name}-digits")
            where.append(f"{name}: {found or 'not found here; it will be downloaded once'}{fallback}")
            continue
        try:
            datasets[name] = data.load_dataset(name, data_dir=data_dir, progress=progress)
            where.append(f"{name}: {datasets[name].source}")
        except data.DatasetNotFound as exc:
            if explicit or name != "mnist" or not available("sklearn"):
                raise
            reason = getattr(exc, "reason", "")
            notes["dataset_fallback"] = f"not found here, and {reason}"[:300]
            say("normlab: MNIST is not available (not found, and the download failed); running "
                "on scikit-learn's bundled 8x8 digits instead. Pass --data-dir DIR to use "
                "MNIST files you have, or --dataset mnist to make this an error.")
            experiment = check_models(replace_dataset(experiment, "digits"),
                                      optional_keras=len({c.impl for c in experiment.configs}) > 1,
                                      say=say)
            datasets["digits"] = data.load_dataset("digits")
            where.append("digits: bundled with scikit-learn (MNIST unavailable)")
    return Prepared(experiment, datasets, notes, "; ".join(where))
