"""The lab's experiments as flat, typed configurations and named presets.

One :class:`RunConfig` describes one training run (one seed); an
:class:`Experiment` is a named list of configurations run over several seeds.
Every preset below is a plain function returning an :class:`Experiment`; its
docstring gives the command that runs it and roughly how long it takes on a
2-core CPU with the JAX backend (PyTorch and TensorFlow are slower).

This module does not import Keras.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable

PROTOCOLS = ("standard", "tutorial")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run. Flat on purpose: every field is a CLI ``--set`` key."""

    experiment: str = "compare"  # groups runs into one table/plot in the report
    label: str = ""  # the row name; defaults to `norms`
    series: str = ""  # the line a sweep point belongs to; defaults to `label`
    sweep: str = ""  # name of the swept quantity (e.g. "batch size"); "" for comparisons
    x: float = 0.0  # the swept value of this run
    norms: str = "none"  # placement: norm specs joined by '>', one per conv
    arch: str = "tutorial"  # "tutorial" (2x Conv2D(10) max) or "deep" (4 blocks, last map 4x4)
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

    def __post_init__(self):
        checks = (
            ("protocol", self.protocol in PROTOCOLS, f"one of {', '.join(PROTOCOLS)}"),
            ("epochs", self.epochs >= 1, "an int >= 1"),
            ("max_steps", self.max_steps >= 0, "an int >= 0 (0 = train for `epochs`)"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
            ("learning_rate", self.learning_rate > 0, "a float > 0"),
            ("train_subset", self.train_subset >= 0, "an int >= 0 (0 = all)"),
            ("test_subset", self.test_subset >= 0, "an int >= 0 (0 = all)"),
            ("eval_batch_size", self.eval_batch_size >= 1, "an int >= 1"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"Invalid `{key}`: expected {expected}. Received: {key}={getattr(self, key)!r}. "
                    "Pass a valid value."
                )
        if not self.label:
            object.__setattr__(self, "label", self.norms)
        if not self.series:
            object.__setattr__(self, "series", self.label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def slug(self) -> str:
        """A file-system-safe name for this configuration (without the seed)."""
        return re.sub(r"[^A-Za-z0-9=.,+-]+", "_", self.label).strip("_") or "run"


def config_keys() -> list[str]:
    """The names of every :class:`RunConfig` field."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def check_keys(overrides: dict) -> None:
    """Raises ``ValueError`` naming the valid keys if ``overrides`` has an unknown one."""
    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        raise ValueError(
            f"Invalid `key`: expected a RunConfig field. Received: key={', '.join(unknown)}. "
            f"Valid keys: {', '.join(config_keys())}."
        )


def parse_value(key: str, text: str):
    """Converts ``text`` to the type of the RunConfig field ``key`` (for ``--set key=value``)."""
    check_keys({key: None})
    kind = {f.name: f.type for f in dataclasses.fields(RunConfig)}[key]
    try:
        if kind == "bool":
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        return {"int": int, "float": float}.get(kind, str)(text)
    except ValueError:
        raise ValueError(
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

    def grid(self) -> list[RunConfig]:
        """Every run, seed-major: all configurations for seed 0, then seed 1, ...

        Seed-major order means an interrupted grid still covers every configuration.
        """
        return [dataclasses.replace(c, seed=s) for s in self.seeds for c in self.configs]

    def replace(self, *, seeds=None, **overrides) -> "Experiment":
        """A copy with ``overrides`` applied to every configuration (keys are checked)."""
        check_keys(overrides)
        configs = tuple(dataclasses.replace(c, **overrides) for c in self.configs)
        return dataclasses.replace(self, configs=configs, seeds=tuple(seeds or self.seeds))


    def renamed(self, suffix: str) -> "Experiment":
        """A copy whose name (and every configuration's ``experiment``) ends with ``suffix``."""
        configs = tuple(dataclasses.replace(c, experiment=c.experiment + suffix)
                        for c in self.configs)
        return dataclasses.replace(self, name=self.name + suffix, configs=configs)


# ------------------------------------------------------------------------------ presets

GN = "group(groups=5, axis=3)"
IN = "instance(axis=3, beta_initializer='random_uniform', gamma_initializer='random_uniform')"
LN = "layer(axis=1)"
BN = "batch(axis=3)"
CLASSIC = {"GroupNorm": GN, "InstanceNorm": IN, "LayerNorm": LN, "BatchNorm": BN, "none": "none"}
COMBOS = {"BN": f"{BN}>{BN}", "GN": f"{GN}>{GN}", "BN>GN": f"{BN}>{GN}", "GN>BN": f"{GN}>{BN}"}


def compare(norms: dict[str, str] | None = None, **overrides) -> Experiment:
    """The classic tutorial comparison: GroupNorm(5), InstanceNorm, LayerNorm(axis=1),
    BatchNorm and no norm after one Conv2D(10), full MNIST, 1 epoch, batch 32, 3 seeds.

    Run: ``normlab compare`` (15 runs; about 3 minutes on 2 idle CPU cores with JAX, 9 when
    the cores are shared; ``--quick``: under a minute).
    """
    norms = norms or CLASSIC
    configs = tuple(RunConfig(experiment="compare", label=k, norms=v) for k, v in norms.items())
    return Experiment("compare", "Normalization layers after one convolution", configs).replace(
        **overrides)


def combos(**overrides) -> Experiment:
    """Two convolutions with a norm after each: BN only, GN only, BN>GN, GN>BN.

    Run: ``normlab compare --preset combos`` (12 runs; about 4 minutes with JAX).
    """
    configs = tuple(RunConfig(experiment="combos", label=k, norms=v) for k, v in COMBOS.items())
    return Experiment("combos", "Two convolutions, one norm after each", configs).replace(
        **overrides)


def batch_size(values=(32, 16, 8, 4, 2), arch: str = "tutorial", base_batch: int = 32,
               base_lr: float = 1e-3, **overrides) -> Experiment:
    """BN vs GN over batch sizes, learning rate scaled linearly (``base_lr * b / base_batch``).

    The number of epochs is held fixed (so smaller batches take more, smaller steps);
    pass ``--max-steps N`` to hold optimizer steps fixed instead. Accuracy is reported
    in eval mode (BN uses its moving averages) and train mode (BN uses the statistics
    of test batches of the training batch size).

    Run: ``normlab sweep batch-size`` (30 runs; about 15 minutes on 2 idle cores with JAX,
    33 when shared; batch 2 is 30,000 steps per run).
    """
    for key in ("batch_size", "learning_rate"):
        if key in overrides:
            raise ValueError(
                f"Invalid `{key}`: the batch-size sweep sets it for every point. "
                f"Received: {key}={overrides[key]!r}. Use --values for the batch sizes."
            )
    name = "batch-size" if arch == "tutorial" else f"batch-size-{arch}"
    configs = tuple(
        RunConfig(experiment=name, label=f"{series} b={b}", series=series, sweep="batch size",
                  x=b, norms=spec, arch=arch, batch_size=b, learning_rate=base_lr * b / base_batch,
                  train_mode_eval=True)
        for series, spec in (("BN", BN), ("GN", GN)) for b in values
    )
    title = f"BN vs GN across batch sizes ({arch} net, lr = {base_lr:g} x batch / {base_batch})"
    return Experiment(name, title, configs).replace(**overrides)


def batch_size_deep(values=(32, 16, 8, 4, 2), **overrides) -> Experiment:
    """The batch-size sweep on the deeper net (four conv blocks, last feature maps 4x4),
    where BN's statistics span few values per channel at small batch sizes.

    Run: ``normlab sweep batch-size-deep --train-subset 20000`` (30 runs on a third of
    MNIST; about 20 minutes with JAX; the full 60k takes about three times as long).
    """
    return batch_size(values, arch="deep", **overrides)


def groups(values=(1, 2, 5, 10), **overrides) -> Experiment:
    """GroupNorm with G = 1 (LayerNorm-like), 2, 5, 10 (InstanceNorm-like) groups of 10 channels.

    Run: ``normlab sweep groups`` (12 runs; about 4 minutes with JAX).
    """
    configs = tuple(
        RunConfig(experiment="groups", label=f"G={g}", series="GN", sweep="groups", x=g,
                  norms=f"group(groups={g}, axis=3)")
        for g in values
    )
    return Experiment("groups", "GroupNorm: number of groups (10 channels)", configs).replace(
        **overrides)


PRESETS: dict[str, Callable[..., Experiment]] = {
    "compare": compare,
    "combos": combos,
    "batch-size": batch_size,
    "batch-size-deep": batch_size_deep,
    "groups": groups,
}
SWEEPS = ("batch-size", "batch-size-deep", "groups")
QUICK = dict(dataset="digits", max_steps=30, test_subset=200)


def preset(name: str, **kwargs) -> Experiment:
    """The preset ``name`` (see :data:`PRESETS`) built with ``kwargs``."""
    if name not in PRESETS:
        raise ValueError(
            f"Invalid `preset`: expected one of {', '.join(PRESETS)}. Received: preset={name!r}. "
            "Run `normlab list` to see them."
        )
    return PRESETS[name](**kwargs)
