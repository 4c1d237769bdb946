"""Whether a finished run's files agree with each other and with its directory.

A run lives in ``OUT/<experiment>/<label>/<variant>/seed<N>/`` (see
:mod:`normlab.lab.store`; normlab 0.1.0 wrote ``OUT/<experiment>/<label>/seed<N>/``,
with no variant folder, and the report reads those too) and writes its configuration twice: to
``config.json`` when it starts and in ``summary.json`` when it finishes. Files
copied into another run's folder (``seed0`` copied to ``seed1``) or edited by
hand (a learning rate in ``config.json``, a label or an experiment in the
summary) break that agreement. :func:`disagreement` says how; the grid refuses
to reuse such a run (:func:`normlab.lab.store.plan`), and the report lists it
with the unreadable runs instead of summarizing it under a name, seed or
setting that is not its own (:func:`normlab.lab.store.load_runs`).

This module imports nothing outside the standard library.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MISSING = object()

#: A variant folder's name, ``<backend>-<impl>-<hash>`` (:attr:`normlab.lab.experiments.RunConfig.variant`).
_VARIANT = re.compile(r"[a-z]+-[a-z]+-[0-9a-f]{8}")


def disagreement(run_dir: str | os.PathLike, summary: dict, stored: object) -> str:
    """Why a finished run's files disagree, or ``""`` where they agree.

    Args:
        run_dir: the run's directory, ``.../<experiment>/<label>/<variant>/seed<N>``
            (or 0.1.0's ``.../<experiment>/<label>/seed<N>``).
        summary: its ``summary.json`` as read back (with a ``config`` object).
        stored: its ``config.json`` as read back (None where it is missing or unreadable).

    Example:
        >>> from normlab.lab.consistency import disagreement
        >>> config = {"experiment": "compare", "seed": 0, "learning_rate": 0.001}
        >>> disagreement("runs/compare/GN/jax-normlab-0123abcd/seed0", {"config": config}, config)
        ''
        >>> disagreement("runs/compare/GN/jax-normlab-0123abcd/seed1", {"config": config}, config)
        "summary.json holds seed 0's run, in the folder seed1"
        >>> disagreement("runs/compare/GN/jax-normlab-0123abcd/seed0", {"config": config},
        ...              {**config, "learning_rate": 0.01})
        "config.json differs from summary.json's config in learning_rate"
    """
    run_dir = Path(run_dir)
    config = summary["config"]
    parts = run_dir.absolute().parts
    depth = 4 if len(parts) >= 2 and _VARIANT.fullmatch(parts[-2]) else 3  # (0.1.0: no variant folder)
    folder = parts[-depth] if len(parts) >= depth else ""
    if config.get("experiment") != folder:  # also a name that is no folder's: '../x', 'a/b'
        return (f"summary.json names experiment {config.get('experiment')!r}, in the folder of "
                f"experiment {folder!r}")
    if run_dir.name != f"seed{config.get('seed')}":
        return f"summary.json holds seed {config.get('seed')!r}'s run, in the folder {run_dir.name}"
    if not isinstance(stored, dict):
        return "config.json is missing or not a JSON object"
    changed = sorted(k for k in {*stored, *config} if stored.get(k, _MISSING) != config.get(k, _MISSING))
    if changed:
        return f"config.json differs from summary.json's config in {', '.join(changed)}"
    return ""
