"""Training and evaluating one run (imports Keras).

:func:`run_one` trains one :class:`~normlab.lab.experiments.RunConfig` into a
run directory through :mod:`normlab.lab.store`, and returns its summary.

Seeding: ``keras.utils.set_random_seed(seed)`` before each model is built (Python,
NumPy and backend RNGs: the initial weights), the dropout layer seeded with
``seed`` (its masks), and a ``numpy`` generator seeded with ``seed`` for the data
order, identical on every backend. Runs with the same seed therefore share
their data order and dropout masks, and their convolution and dense weights
where the architectures agree: their differences are paired. Under
``impl="keras"`` the model starts from exactly the weights normlab's run of the
same seed starts from (copied), so the two differ only in the norm layers'
computations.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from normlab.lab import interrupt, store
from normlab.lab.experiments import TRAINING_REVISION, RunConfig


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
            worker: dict | None = None, grid_index: int | None = None,
            notes: dict | None = None) -> dict:
    """Trains and evaluates one configuration in ``run_dir`` (wiped first); returns the summary.

    ``worker`` (where the run executed; default: this process), ``grid_index`` (its
    position in the grid, which orders the report's rows) and ``notes`` (e.g. why
    the dataset was replaced) go into the summary.
    """
    import keras

    from normlab.lab.models import build_model, copy_weights, parameter_counts

    start = time.perf_counter()
    store.begin_run(run_dir, config)

    x_train, y_train, x_test, y_test = split_data(config, dataset)
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    if on_total:
        on_total(total_steps)

    keras.backend.clear_session()
    set_random_seed(config.seed)
    model = build_model(config.norms, dataset.input_shape, dataset.num_classes,
                        arch=config.arch, impl=config.impl, seed=config.seed)
    if config.impl != "normlab":  # start from exactly the weights of normlab's run of this seed
        set_random_seed(config.seed)
        twin = build_model(config.norms, dataset.input_shape, dataset.num_classes,
                           arch=config.arch, impl="normlab", seed=config.seed)
        copy_weights(twin, model)
        del twin
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    interrupt_check = _interrupt_callback()
    callbacks = [interrupt_check] + ([_step_callback(on_step)] if on_step else [])
    order_rng = np.random.default_rng(config.seed)

    steps, epoch, fit_times, lines = 0, 0, [], []
    while steps < total_steps:
        interrupt.check()
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
                              return_dict=True, callbacks=[interrupt_check])
        lines.append(dict(epoch=epoch, steps=steps, examples=int(len(order)),
                          train_loss=float(history["loss"][-1]),
                          train_accuracy=float(history["accuracy"][-1]),
                          test_loss=float(test["loss"]), test_accuracy=float(test["accuracy"]),
                          fit_seconds=fit_times[-1], eval_seconds=time.perf_counter() - t0))
        store.write_metrics(run_dir, lines)
    line, seen = lines[-1], sum(entry["examples"] for entry in lines)

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
        epochs_run=epoch, steps=steps, examples_seen=seen,
        train_examples=int(len(y_train)), test_examples=int(len(y_test)),
        params=parameter_counts(model),
        # per epoch of training examples: a last epoch that max_steps cut short counts for its share
        seconds_per_epoch=float(np.sum(fit_times)) * len(y_train) / seen,
        fit_seconds=float(np.sum(fit_times)),
        first_epoch_seconds=fit_times[0], wall_time_s=time.perf_counter() - start,
        backend=keras.backend.backend(), versions=versions(), training_revision=TRAINING_REVISION,
        dataset_source=getattr(dataset, "source", ""), notes=dict(notes or {}),
        worker=worker or dict(executor="local", host=platform.node(), pid=os.getpid()),
        grid_index=grid_index,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return store.finish_run(run_dir, summary)


def set_random_seed(seed: int, verbose: bool = False) -> None:
    """``keras.utils.set_random_seed``, with TensorFlow's start-up lines hidden.

    Keras also seeds TensorFlow whenever it is installed (for ``tf.data``), so on
    JAX or PyTorch the first call imports TensorFlow, which prints its log lines;
    they are hidden unless ``verbose``.
    """
    import keras

    from normlab.lab.backend import quiet_stderr

    with quiet_stderr(verbose):
        keras.utils.set_random_seed(seed)


def evaluate_train_mode(model, x, y, batch_size: int) -> dict:
    """Test loss and accuracy with BatchNorm-like layers in training mode.

    The model is called with ``training=True`` (so batch statistics are used, over
    test batches of ``batch_size``) but with dropout disabled; every non-trainable
    variable (moving averages, RNG state) is restored afterwards.
    """
    import keras

    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in model.non_trainable_variables]  # copies, from a GPU too
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        wrapper = _train_mode_class()(model)
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


def _interrupt_callback():
    """Raises a Ctrl-C that got lost (:mod:`normlab.lab.interrupt`) after the
    batch it arrived in. On the main thread: not ``async_safe``."""
    import keras

    class InterruptCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            interrupt.check()

        def on_test_batch_end(self, batch, logs=None):
            interrupt.check()

    return InterruptCallback()


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
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "normlab"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}+dirty" if head and dirty else head


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    """Python, normlab's version and git revision (in a checkout; else "") and the versions
    of Keras, NumPy and the backends."""
    import importlib.metadata as md

    if not _VERSIONS:
        _VERSIONS.update(python=platform.python_version(), normlab_git=_git_revision())
        for name in ("normlab", "keras", "numpy", "jax", "jaxlib", "torch", "tensorflow", "tensorflow-cpu"):
            try:
                _VERSIONS[name] = md.version(name)
            except md.PackageNotFoundError:
                pass
    return dict(_VERSIONS)
