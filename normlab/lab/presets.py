"""The lab's named experiments: the classic comparisons and the sweeps.

Every preset is a plain function returning an :class:`~normlab.lab.experiments.Experiment`;
:data:`PRESETS` gives each a one-line summary (shown by ``normlab list`` and
``--help``). Each docstring gives the command that runs it and how long it took
on a shared 2-core CPU with the JAX backend (docs/lab/README.md has the
measured times; PyTorch and TensorFlow are slower).

This module imports no deep-learning framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from normlab.lab.errors import ConfigError
from normlab.lab.experiments import DATASETS, Experiment, RunConfig, dataset_key

GN = "group(groups=5, axis=3)"
IN = "instance(axis=3, beta_initializer='random_uniform', gamma_initializer='random_uniform')"
LN = "layer(axis=1)"
BN = "batch(axis=3)"
#: The TF Addons normalization tutorial's three models (GroupNorm, InstanceNorm and
#: LayerNorm after one Conv2D(10), each with the tutorial's exact arguments), plus
#: BatchNorm and no norm as references.
CLASSIC = {"GroupNorm": GN, "InstanceNorm": IN, "LayerNorm": LN, "BatchNorm": BN, "none": "none"}
#: The BatchNorm/GroupNorm combination tutorial's four models: two Conv2D(10), a norm
#: after the first, and after the second either none or the other norm.
COMBOS = {"BN only": f"{BN}>none", "GN only": f"{GN}>none",
          "GN then BN": f"{GN}>{BN}", "BN then GN": f"{BN}>{GN}"}
#: The variant with the same norm after both convolutions (normlab's earlier "combos").
COMBOS_BOTH = {"BN, BN": f"{BN}>{BN}", "GN, GN": f"{GN}>{GN}",
               "BN, GN": f"{BN}>{GN}", "GN, BN": f"{GN}>{BN}"}
COMBOS_NOTE = ("Labels follow the models' code. The original notebook swapped the labels of "
               "the last two models: it printed GN then BN's result under 'Batch and then "
               "Group' and BN then GN's under 'Group and then Batch'.")
#: Notes the report prints under a table that holds all of a preset's labelled placements.
NOTES = ((COMBOS, COMBOS_NOTE),)


def notes_for(placements: dict[str, str]) -> list[str]:
    """The notes of every preset whose labelled placements all appear in ``placements``.

    Example:
        >>> from normlab.lab.presets import COMBOS, notes_for
        >>> notes_for(COMBOS)[0].startswith("Labels follow the models' code.")
        True
        >>> notes_for({"BN only": COMBOS["BN only"]})
        []
    """
    return [note for labelled, note in NOTES
            if all(placements.get(label) == norms for label, norms in labelled.items())]


def _experiment(name: str, title: str, norms: dict[str, str], notes: str = "",
                **overrides: Any) -> Experiment:
    configs = tuple(RunConfig(experiment=name, label=k, norms=v) for k, v in norms.items())
    return Experiment(name, title, configs, notes=notes).replace(**overrides)


def compare(norms: dict[str, str] | None = None, **overrides: Any) -> Experiment:
    """The classic comparison: GroupNorm(5), InstanceNorm, LayerNorm(axis=1), BatchNorm
    and no norm after one Conv2D(10); full MNIST, 1 epoch, batch 32, 3 seeds.

    GroupNorm, InstanceNorm and LayerNorm are the TF Addons tutorial's models
    line by line (same layers, same arguments); BatchNorm and no norm are added
    as references.

    Run: ``normlab compare`` (15 runs; about 3 minutes on 2 CPU cores with JAX).
    """
    return _experiment("compare", "Normalization layers after one convolution",
                       norms or CLASSIC, **overrides)


def combos(**overrides: Any) -> Experiment:
    """The BatchNorm/GroupNorm combination tutorial's four models, exactly.

    Two Conv2D(10, 3x3); after the first a norm, after the second none or the
    other norm: BN only (739,728 trainable + 20 non-trainable parameters), GN only
    (739,728 / 0), GN then BN (739,748 / 20), BN then GN (739,748 / 20). The
    tutorial's protocol is ``--protocol tutorial`` (one epoch on the 10,000 test
    images, running training accuracy). The original notebook printed the last two
    results under swapped labels (its "Batch and then Group" model is GN then BN
    in its code); the labels here follow the code.

    Run: ``normlab compare --preset combos --protocol tutorial`` (12 runs; 4 minutes
    with JAX), or without ``--protocol`` on full MNIST (12 runs, about 9 minutes).
    """
    return _experiment("combos", "BatchNorm/GroupNorm combinations (the tutorial's four models)",
                       COMBOS, COMBOS_NOTE, **overrides)


def combos_both(**overrides: Any) -> Experiment:
    """Two Conv2D(10) with a norm after each: BN twice, GN twice, and each order.

    Run: ``normlab compare --preset combos-both`` (12 runs; 10 minutes with JAX).
    """
    return _experiment("combos-both", "Two convolutions, a norm after each", COMBOS_BOTH,
                       **overrides)


def batch_size(values: Iterable[int] = (32, 16, 8, 4, 2), arch: str = "tutorial", base_batch: int = 32,
               base_lr: float = 1e-3, **overrides: Any) -> Experiment:
    """BN vs GN over batch sizes, learning rate scaled linearly (``base_lr * b / base_batch``).

    The number of epochs is held fixed (so smaller batches take more, smaller steps);
    pass ``--max-steps N`` to hold optimizer steps fixed instead. Accuracy is reported
    in eval mode (BN uses its moving averages) and train mode (BN uses the statistics
    of test batches of the training batch size).

    Run: ``normlab sweep batch-size`` (30 runs; 17 minutes on 2 shared cores with JAX:
    batch 2 is 30,000 steps per run); ``--max-steps 1875`` holds steps fixed.
    """
    for key in ("batch_size", "learning_rate"):
        if key in overrides:
            raise ConfigError(
                f"Invalid `{key}`: the batch-size sweep sets it for every point. "
                f"Received: {key}={overrides[key]!r}. "
                + ("Use --values for the batch sizes." if key == "batch_size" else
                   f"It is {base_lr:g} x batch / {base_batch} at each batch size; for another rate, "
                   "run `normlab compare --batch-size B --lr LR` at each batch size.")
            )
    values = _check_values(values, "batch sizes", "32,16,8,4,2")
    name = "batch-size" if arch == "tutorial" else f"batch-size-{arch}"
    configs = tuple(
        RunConfig(experiment=name, label=f"{series} b={b}", series=series, sweep="batch size",
                  x=b, norms=spec, arch=arch, batch_size=b, learning_rate=base_lr * b / base_batch,
                  train_mode_eval=True)
        for series, spec in (("BN", BN), ("GN", GN)) for b in values
    )
    title = f"BN vs GN across batch sizes ({arch} net, lr = {base_lr:g} x batch / {base_batch})"
    return Experiment(name, title, configs).replace(**overrides)


DEEP_SUBSET = 20_000  # batch-size-deep's training images


def batch_size_deep(values: Iterable[int] = (32, 16, 8, 4, 2), train_subset: int | None = None,
                    **overrides: Any) -> Experiment:
    """The batch-size sweep on the deeper net (four conv blocks, last maps 4x4), where
    BN's statistics span few values per channel at small batches; first 20,000 images
    (``train_subset=None``; all of a smaller training split, e.g. ``--quick``'s digits).

    Run: ``normlab sweep batch-size-deep`` (30 runs; 11 minutes with JAX);
    ``--train-subset 0`` uses all 60,000 images (about three times as long).
    """
    if train_subset is None:
        info = DATASETS.get(dataset_key(overrides.get("dataset", RunConfig.dataset)))
        protocol = overrides.get("protocol", RunConfig.protocol)
        train_subset = info.fit_subsets(protocol, DEEP_SUBSET, 0)[0] if info else DEEP_SUBSET
    return batch_size(values, arch="deep", train_subset=train_subset, **overrides)


def groups(values: Iterable[int] = (1, 2, 5, 10), **overrides: Any) -> Experiment:
    """GroupNorm with G = 1 (LayerNorm-like), 2, 5, 10 (InstanceNorm-like) groups of 10 channels.

    Run: ``normlab sweep groups`` (12 runs; 5 minutes with JAX).
    """
    values = _check_values(values, "group counts", "1,2,5,10",
                           " groups=-1 (instance norm) is G=10 here: pass 10.")
    configs = tuple(
        RunConfig(experiment="groups", label=f"G={g}", series="GN", sweep="groups", x=g,
                  norms=f"group(groups={g}, axis=3)")
        for g in values
    )
    return Experiment("groups", "GroupNorm: number of groups (10 channels)", configs).replace(
        **overrides)


def _check_values(values: Iterable[int], what: str, example: str, hint: str = "") -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"Invalid `values`: expected {what} as ints >= 1. Received: "
                          f"values={','.join(map(str, values))!r}. Pass e.g. --values {example}."
                          + hint)
    if len(set(values)) != len(values):
        raise ConfigError(f"Invalid `values`: expected each of the {what} once. Received: "
                          f"values={','.join(map(str, values))!r}. Drop the repeats.")
    return values


@dataclass(frozen=True)
class Preset:
    """A named experiment: how to build it, a one-line summary, and its command."""

    build: Callable[..., Experiment]
    summary: str
    command: str


PRESETS: dict[str, Preset] = {
    "compare": Preset(compare, "GroupNorm, InstanceNorm, LayerNorm (the TF Addons tutorial's "
                      "models), BatchNorm and no norm after one convolution.",
                      "normlab compare"),
    "combos": Preset(combos, "The BN/GN combination tutorial's four models: BN only, GN only, "
                     "GN then BN, BN then GN (its protocol: add --protocol tutorial).",
                     "normlab compare --preset combos"),
    "combos-both": Preset(combos_both, "Two convolutions with a norm after each: BN, BN; "
                          "GN, GN; and each order.", "normlab compare --preset combos-both"),
    "batch-size": Preset(batch_size, "BN vs GN at batch 32 to 2, learning rate scaled with "
                         "the batch, one epoch each.", "normlab sweep batch-size"),
    "batch-size-deep": Preset(batch_size_deep, "The batch-size sweep on a four-block net "
                              "whose last maps are 4x4 (20,000 images).",
                              "normlab sweep batch-size-deep"),
    "groups": Preset(groups, "GroupNorm with 1, 2, 5 and 10 groups of 10 channels.",
                     "normlab sweep groups"),
}
COMPARE_PRESETS = {"classic": "compare", "combos": "combos", "combos-both": "combos-both"}
SWEEPS = ("batch-size", "batch-size-deep", "groups")
QUICK = dict(dataset="digits", max_steps=30, test_subset=200)


def preset(name: str, **kwargs: Any) -> Experiment:
    """The preset ``name`` (see :data:`PRESETS`) built with ``kwargs``."""
    if name not in PRESETS:
        raise ConfigError(
            f"Invalid `preset`: expected one of {', '.join(PRESETS)}. Received: preset={name!r}. "
            "Run `normlab list` to see them."
        )
    return PRESETS[name].build(**kwargs)


# Settings that give an experiment its own name (and so its own table) when they
# differ from the preset's: (field, how the name shows the value).
_NAMED = (("dataset", "{}"), ("arch", "{}"), ("protocol", "{}"), ("train_subset", "train{}"),
          ("test_subset", "test{}"), ("epochs", "e{}"), ("max_steps", "steps{}"),
          ("batch_size", "b{}"), ("learning_rate", "lr{:g}"), ("eval_batch_size", "evalb{}"),
          ("train_mode_eval", "trainmode-{}"))


def variant_name(experiment: Experiment, base: Experiment, quick: bool = False) -> Experiment:
    """``experiment`` renamed after the settings in which it differs from ``base``.

    ``normlab compare --protocol tutorial`` is ``compare-tutorial``, ``--train-subset
    10000`` is ``compare-train10000``, ``--quick`` is ``compare-quick``: runs with other
    settings land in their own table and plot instead of mixing with the preset's.
    With ``quick``, ``base`` is the preset with :data:`QUICK`'s settings, so
    ``--quick --max-steps 10`` is ``compare-quick-steps10``. (Run directories are
    keyed by every setting anyway; see ``RunConfig.variant``.)
    """
    parts = ["quick"] if quick else []
    for key, fmt in _NAMED:
        new = [getattr(c, key) for c in experiment.configs]
        old = [getattr(c, key) for c in base.configs]
        if new != old and len(set(new)) == 1:
            parts.append(fmt.format(new[0]))
    return experiment.renamed("".join(f"-{p}" for p in parts))


def replace_dataset(experiment: Experiment, dataset: str) -> Experiment:
    """The experiment on another dataset, renamed ``<name>-<dataset>`` (offline fallback).

    A subset larger than the new dataset's split becomes all of it (0).
    """
    def fitted(c: RunConfig) -> RunConfig:
        train, test = DATASETS[dataset].fit_subsets(c.protocol, c.train_subset, c.test_subset)
        return dataclasses.replace(c, dataset=dataset, experiment=f"{c.experiment}-{dataset}",
                                   train_subset=train, test_subset=test)

    configs = tuple(fitted(c) for c in experiment.configs)
    return dataclasses.replace(experiment, name=f"{experiment.name}-{dataset}", configs=configs)
