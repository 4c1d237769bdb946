"""The lab's runs as flat, typed configurations, and the grids they form.

One :class:`RunConfig` describes one training run (one seed); an
:class:`Experiment` is a named list of configurations run over several seeds.
The named experiments (``normlab compare``, the sweeps) are in
:mod:`normlab.lab.presets`.

Every value is checked when a configuration is made, before anything is
imported or trained: unknown keys, non-finite or out-of-range numbers, unknown
datasets, architectures, implementations and malformed placements are
:class:`~normlab.lab.errors.ConfigError` s that name the valid values.

This module imports no deep-learning framework (nor NumPy).

Example:
    >>> from normlab.lab.experiments import RunConfig
    >>> c = RunConfig(label="GN", norms="group(groups=5, axis=3)", backend="jax")
    >>> c.slug, c.variant
    ('GN', 'jax-normlab-...')
    >>> RunConfig(learning_rate=float("inf"))
    Traceback (most recent call last):
    ...
    normlab.lab.errors.ConfigError: Invalid `learning_rate`: expected a finite float > 0. ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from normlab.lab.errors import ConfigError
from normlab.lab.models import ARCHITECTURES, is_identity, norm_specs

PROTOCOLS = ("standard", "tutorial")
#: Part of every run directory's hash: bumped when training changes what a run computes
#: (2: dropout seeded with the run's seed; Keras' layers start from normlab's weights;
#: 3: the norms' initializers draw from a stream of their own, see models.build_model).
TRAINING_REVISION = 3
IMPLS = ("normlab", "keras")
#: Whose layers each ``impl`` runs, as the report and the plots name them.
IMPL_OWNERS = {"normlab": "normlab's", "keras": "Keras'"}
BACKENDS = ("tensorflow", "jax", "torch")
MAX_SEED = 2**31 - 1  # the largest seed every backend takes (Keras' torch SeedGenerator keeps an int32)
MAX_SEED_COUNT = 10_000  # --seeds N: more runs per configuration than any grid needs
#: A JSON object as a run directory holds it: ``config.json``, a line of ``metrics.jsonl``, ``summary.json``.
JSONDict = dict[str, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """What the lab knows about a dataset before loading it."""

    shape: tuple[int, int, int]  # one image, channels-last
    classes: int
    summary: str
    offline: bool  # needs no download
    sizes: tuple[int, int]  # images in the train and the test split

    def split_sizes(self, protocol: str) -> tuple[int, int]:
        """(images trained on, images evaluated on) under ``protocol`` (all of each split)."""
        return self.sizes[::-1] if protocol == "tutorial" else self.sizes

    def fit_subsets(self, protocol: str, train: int, test: int) -> tuple[int, int]:
        """A default's ``(train_subset, test_subset)`` for this dataset: each one, or 0
        (all of the split) where the split it is taken from is smaller."""
        sizes = self.split_sizes(protocol)
        return train * (train <= sizes[0]), test * (test <= sizes[1])


#: Every dataset the lab can load (see :mod:`normlab.lab.data`).
DATASETS = {
    "mnist": DatasetInfo((28, 28, 1), 10, "handwritten digits, 60,000 train / 10,000 test "
                         "(downloaded once, 11 MB)", False,
                         (60_000, 10_000)),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, "clothing images, 60,000 / 10,000 "
                                 "(downloaded once, 30 MB)", False,
                                 (60_000, 10_000)),
    "cifar10": DatasetInfo((32, 32, 3), 10, "colour images, 50,000 / 10,000 "
                           "(downloaded once, 163 MB)", False,
                           (50_000, 10_000)),
    "digits": DatasetInfo((8, 8, 1), 10, "scikit-learn's bundled 8x8 digits, 1,438 / 359 "
                          "(offline)", True, (1_438, 359)),
    "synthetic": DatasetInfo((28, 28, 1), 10, "generated blocky patterns, 500 / 100 "
                             "(offline, for tests)", True, (500, 100)),
}


def dataset_key(name: str) -> str:
    """The canonical dataset name (``-`` and ``_`` are interchangeable, case ignored)."""
    return str(name).strip().lower().replace("-", "_")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run. Flat on purpose: every field is a CLI ``--set`` key."""

    experiment: str = "compare"  # groups runs into one table/plot in the report
    label: str = ""  # the row name; defaults to `norms`
    series: str = ""  # the line a sweep point belongs to; defaults to `label`
    sweep: str = ""  # name of the swept quantity (e.g. "batch size"); "" for comparisons
    x: float = 0.0  # the swept value of this run
    norms: str = "none"  # placement: one norm spec per conv joined by '>', 'none' = no norm there
    arch: str = "tutorial"  # "tutorial" (Conv2D(10) per norm) or "deep" (4 blocks, last map 4x4)
    dataset: str = "mnist"
    protocol: str = "standard"  # "standard": train 60k, test 10k; "tutorial": train on the 10k test split
    epochs: int = 1
    max_steps: int = 0  # > 0: train for exactly this many optimizer steps (epochs ignored)
    batch_size: int = 32
    learning_rate: float = 1e-3  # Adam
    seed: int = 0
    train_subset: int = 0  # > 0: use only the first N training images
    test_subset: int = 0  # > 0: use only the first N test images
    train_mode_eval: bool = False  # also evaluate with batch statistics (training=True, no dropout)
    eval_batch_size: int = 256
    impl: str = "normlab"  # "normlab" or "keras": whose layer implements each norm
    backend: str = ""  # Keras backend; "" = the one Keras runs on (filled in before running)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", dataset_key(self.dataset))
        for f in dataclasses.fields(self):
            _check_type(f.name, str(f.type), getattr(self, f.name))
        checks = (
            ("protocol", self.protocol in PROTOCOLS, f"one of {', '.join(PROTOCOLS)}",
             "Pass --protocol standard or --protocol tutorial."),
            ("dataset", self.dataset in DATASETS, f"one of {', '.join(DATASETS)}",
             "Pass --dataset mnist (or see `normlab list`)."),
            ("arch", self.arch in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}",
             "Pass --set arch=tutorial or --set arch=deep."),
            ("impl", self.impl in IMPLS, f"one of {', '.join(IMPLS)}",
             "Pass --impl normlab or --impl keras."),
            ("backend", self.backend in ("", *BACKENDS), f"one of {', '.join(BACKENDS)}",
             "Pass --backend jax, torch or tensorflow."),
            ("epochs", self.epochs >= 1, "an int >= 1", "Pass e.g. --epochs 1."),
            ("max_steps", self.max_steps >= 0, "an int >= 0 (0 = train for `epochs`)",
             "Pass e.g. --max-steps 100, or 0."),
            ("batch_size", self.batch_size >= 1, "an int >= 1", "Pass e.g. --batch-size 32."),
            ("learning_rate", math.isfinite(self.learning_rate) and self.learning_rate > 0,
             "a finite float > 0", "Pass e.g. --lr 0.001."),
            ("seed", 0 <= self.seed <= MAX_SEED, "an int from 0 to 2**31 - 1",
             "Pass e.g. --seeds 0,1,2."),
            ("x", math.isfinite(self.x), "a finite number", "Pass a finite value."),
            ("train_subset", self.train_subset >= 0, "an int >= 0 (0 = all)",
             "Pass e.g. --train-subset 10000, or 0."),
            ("test_subset", self.test_subset >= 0, "an int >= 0 (0 = all)",
             "Pass e.g. --set test_subset=1000, or 0."),
            ("eval_batch_size", self.eval_batch_size >= 1, "an int >= 1",
             "Pass e.g. --set eval_batch_size=256."),
        )
        for key, ok, expected, fix in checks:
            if not ok:
                raise ConfigError(f"Invalid `{key}`: expected {expected}. "
                                  f"Received: {key}={getattr(self, key)!r}. {fix}")
        for key, split, size in zip(("train_subset", "test_subset"), ("trains on", "evaluates on"),
                                    DATASETS[self.dataset].split_sizes(self.protocol)):
            if getattr(self, key) > size:
                raise ConfigError(
                    f"Invalid `{key}`: expected at most {size}: the {self.protocol} protocol "
                    f"{split} {size:,} {self.dataset} images. Received: {key}={getattr(self, key)!r}. "
                    f"Pass at most {size}, or 0 for all of them.")
        try:
            norm_specs(self.norms, self.arch)  # syntax and count only; names are checked later
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not self.label:
            object.__setattr__(self, "label", self.norms)
        if not self.series:
            object.__setattr__(self, "series", self.label)

    def to_dict(self) -> JSONDict:
        return dataclasses.asdict(self)

    @property
    def slug(self) -> str:
        """A file-system-safe name for this configuration's label."""
        return re.sub(r"[^A-Za-z0-9=.,+-]+", "_", self.label).strip("_") or "run"

    def result_fields(self) -> JSONDict:
        """Every field that can change the numbers of a run, except the seed."""
        return {k: v for k, v in self.to_dict().items() if k not in _NAMING_FIELDS}

    def run_fields(self) -> JSONDict:
        """:meth:`result_fields` and the seed: what a run's ``config.json`` must hold to be this run."""
        return {**self.result_fields(), "seed": self.seed}

    @property
    def variant(self) -> str:
        """``<backend>-<impl>-<hash>``: names the run directory of these settings.

        The hash covers :meth:`result_fields`, so runs that differ in anything that
        changes their result (protocol, subsets, epochs or steps, batch size,
        learning rate, implementation, backend, ...) never share a directory.
        """
        text = json.dumps({**self.result_fields(), "revision": TRAINING_REVISION}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return f"{self.backend or 'any'}-{self.impl}-{digest}"

    @property
    def has_norm(self) -> bool:
        """False when the placement puts no norm anywhere (``none`` after every conv)."""
        return not all(is_identity(s) for s in norm_specs(self.norms, self.arch))


# Fields that name or place a run in the report, without changing what it computes.
_NAMING_FIELDS = ("experiment", "label", "series", "sweep", "x", "seed")


def _check_type(key: str, kind: str, value: object) -> None:
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        raise ConfigError(f"Invalid `{key}`: expected a value of type {kind}. "
                          f"Received: {key}={value!r}. Pass a {kind}.")


def config_keys() -> list[str]:
    """The names of every :class:`RunConfig` field."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def check_keys(overrides: dict[str, Any]) -> None:
    """Raises ``ConfigError`` naming the valid keys if ``overrides`` has an unknown one."""
    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        raise ConfigError(
            f"Invalid `key`: expected a RunConfig field. Received: key={', '.join(unknown)}. "
            f"Valid keys: {', '.join(config_keys())}."
        )


def parse_value(key: str, text: str) -> Any:
    """Converts ``text`` to the type of the RunConfig field ``key`` (for ``--set key=value``)."""
    check_keys({key: None})
    kind = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}[key]
    try:
        if kind == "bool":
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        return {"int": int, "float": float}.get(kind, str)(text)
    except ValueError:
        raise ConfigError(
            f"Invalid `{key}`: expected a value of type {kind}. Received: {key}={text!r}. "
            "Pass e.g. --set epochs=2 or --set train_mode_eval=true."
        ) from None


@dataclass(frozen=True)
class Experiment:
    """A named grid: configurations (seed left at 0) run once per seed."""

    name: str
    title: str
    configs: tuple[RunConfig, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    notes: str = ""

    def __post_init__(self) -> None:
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED
                            for s in seeds):
            raise ConfigError(f"Invalid `seeds`: expected one or more ints from 0 to 2**31 - 1. "
                              f"Received: seeds={seeds!r}. Pass e.g. --seeds 3 or --seeds 0,4,7.")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ConfigError(f"Invalid `seeds`: expected each seed once (a repeated seed "
                              f"repeats a run exactly). Received: seeds={seeds!r}, which repeats "
                              f"{', '.join(map(str, repeated))}. Drop the repeats.")
        keys = [(c.label, c.impl) for c in self.configs]
        twice = sorted({k[0] for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"Invalid `norms`: expected each configuration once. Received: "
                              f"{', '.join(map(repr, twice))} more than once. Drop the repeats.")
        object.__setattr__(self, "seeds", seeds)

    def grid(self) -> list[RunConfig]:
        """Every run, seed-major: all configurations for seed 0, then seed 1, ...

        Seed-major order means an interrupted grid still covers every configuration.
        """
        return [dataclasses.replace(c, seed=s) for s in self.seeds for c in self.configs]

    def replace(self, *, seeds: Iterable[int] | None = None, **overrides: Any) -> "Experiment":
        """A copy with ``overrides`` applied to every configuration (keys are checked)."""
        check_keys(overrides)
        configs = tuple(dataclasses.replace(c, **overrides) for c in self.configs)
        return dataclasses.replace(self, configs=configs, seeds=tuple(seeds or self.seeds))

    def renamed(self, suffix: str) -> "Experiment":
        """A copy whose name (and every configuration's ``experiment``) ends with ``suffix``."""
        configs = tuple(dataclasses.replace(c, experiment=c.experiment + suffix)
                        for c in self.configs)
        return dataclasses.replace(self, name=self.name + suffix, configs=configs)

    def with_impls(self, impls: Iterable[str]) -> "Experiment":
        """Each configuration once per implementation (adjacent, so timings interleave).

        A placement without any norm is the same model under every implementation,
        so it runs once: under normlab where it is one of them (the report's main
        table), else under the first.
        """
        impls = tuple(dict.fromkeys(impls))
        bad = [i for i in impls if i not in IMPLS]
        if not impls or bad:
            raise ConfigError(f"Invalid `impl`: expected one or more of {', '.join(IMPLS)}. "
                              f"Received: impl={','.join(impls)!r}. Pass --impl normlab, "
                              "--impl keras or --impl normlab,keras.")
        main = "normlab" if "normlab" in impls else impls[0]
        configs = tuple(dataclasses.replace(c, impl=impl) for c in self.configs
                        for impl in impls if impl == main or c.has_norm)
        return dataclasses.replace(self, configs=configs)


def json_typed(value: object, like: object) -> bool:
    """Whether ``value`` (read from JSON) has the type of ``like``: an int for a float, never a bool for a number."""
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(like, bool) and isinstance(value, bool)
    if isinstance(like, (int, float)):
        return isinstance(value, int) if isinstance(like, int) else isinstance(value, (int, float))
    return isinstance(value, type(like))


def has_field_types(stored: JSONDict) -> bool:
    """Whether each :class:`RunConfig` field in ``stored`` (a config read back) has the field's type."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return all(json_typed(v, defaults[k]) for k, v in stored.items() if k in defaults)


#: The numbers a run's summary holds (None where a value was not finite).
SUMMARY_NUMBERS = ("accuracy", "loss", "wall_time_s", "train_examples", "test_examples", "test_accuracy",
                   "test_loss", "train_accuracy", "train_loss", "train_mode_accuracy", "train_mode_loss",
                   "seconds_per_epoch", "fit_seconds", "first_epoch_seconds", "steps", "epochs_run", "examples_seen")


#: The optional keys of a summary and a value of their type (absent or null: not set).
SUMMARY_EXTRAS = {"notes": {}, "grid_index": 0, "training_revision": 0, "copied_from": "", "finished_at": ""}
#: The accuracies a summary holds: fractions, never percentages.
SUMMARY_ACCURACIES = ("accuracy", "test_accuracy", "train_accuracy", "train_mode_accuracy")


def has_summary_types(summary: JSONDict) -> bool:
    """Whether a summary read back (with its keys present) has the types a run writes,
    and its accuracies are fractions (an edited 80.8 would be reported as 8080 %)."""
    params = summary["params"]
    return (has_field_types(summary["config"]) and isinstance(summary["metric"], str)
            and all(summary.get(k) is None or json_typed(summary[k], 0.0) for k in SUMMARY_NUMBERS)
            and all(summary.get(k) is None or json_typed(summary[k], like) for k, like in SUMMARY_EXTRAS.items())
            and all(summary.get(k) is None or 0 <= summary[k] <= 1 for k in SUMMARY_ACCURACIES)
            and all(json_typed(params[k], 0) for k in ("trainable", "non_trainable")))
