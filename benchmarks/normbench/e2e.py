"""The end-to-end part: the classic small CNN, one epoch, normlab's norms against Keras'."""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
E2E_EPOCHS = 4
BATCH = 32


def mnist(limit=10_000):
    """The MNIST test images (``../shared/data/mnist/`` beside the repository), or random data."""
    import numpy as np

    images, labels = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        with gzip.open(images, "rb") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
        with gzip.open(labels, "rb") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return (x[:limit].astype("float32") / 255.0), y[:limit].astype("int32"), "MNIST t10k"
    rng = np.random.default_rng(0)
    return rng.random((limit, 784), dtype=np.float32), rng.integers(0, 10, limit).astype("int32"), "random"


def rotated(names, round_):
    """``names`` in the order of round ``round_``: rotated by one each round,
    so that no model always runs first (or right after the same other one).
    Two runs of one Keras model in a fixed order differed by 4% (median
    per-round ratio, 8 rounds of the CNN's epoch on JAX)."""
    names = list(names)
    k = round_ % len(names)
    return names[k:] + names[:k]


def warmed_model(keras, make_norm, x, y, batch_size=BATCH):
    """The CNN with ``make_norm()`` after it, compiled, its train step built for
    a full batch and for the final partial one (``len(x) % batch_size``
    images), so that no timed epoch on ``x`` includes a compilation."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(10, 3),
        make_norm(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    warm = batch_size + len(x) % batch_size
    model.fit(x[:warm], y[:warm], batch_size=batch_size, epochs=1, verbose=0)
    return model


def e2e(keras, normlab, quick):
    """Epoch seconds of the CNN with each norm, the four models' epochs interleaved."""
    import numpy as np

    x, y, source = mnist(2_000 if quick else 10_000)
    norms = {
        "normlab GroupNormalization(5)": lambda: normlab.GroupNormalization(groups=5),
        "keras GroupNormalization(5)": lambda: keras.layers.GroupNormalization(groups=5),
        "normlab BatchNormalization": lambda: normlab.BatchNormalization(),
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(),
    }
    models = {name: warmed_model(keras, make, x, y) for name, make in norms.items()}
    # Epochs of the four models interleaved, E2E_EPOCHS rounds: a slow spell of
    # the machine then hits every model alike; the median epoch is reported.
    seconds = {name: [] for name in models}
    first = {}
    for round_ in range(1 if quick else E2E_EPOCHS):
        for name in rotated(models, round_):
            model = models[name]
            start = time.perf_counter()
            history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
            first.setdefault(name, history.history)
    rows = []
    for name in models:
        median = float(np.median(seconds[name]))
        rows.append({
            "norm": name, "seconds": median, "epochs_seconds": seconds[name], "images": len(x),
            "data": source, "loss": float(first[name]["loss"][-1]),
            "accuracy": float(first[name]["accuracy"][-1]),
        })
        print(f"  e2e {name}: {median:.2f} s (median of {len(seconds[name])} epochs)",
              file=sys.stderr, flush=True)
    return rows


#: Interleaved rounds of the keras.applications comparison, and training steps per round.
APPLICATION_ROUNDS, APPLICATION_STEPS = 5, 4


def applications(keras, quick):
    """Training-step seconds of ``keras.applications.MobileNetV2`` (alpha 0.5,
    96x96x3, batch 32, 52 batch norms) with Keras' layers and converted to
    normlab's by ``normlab.compat.keras_layers.convert``, rounds interleaved."""
    import numpy as np

    from normlab.compat import keras_layers

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.5, weights=None, classes=10)
    models = {"keras MobileNetV2": model, "normlab MobileNetV2 (converted)": keras_layers.convert(model)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 96, 96, 3)).astype("float32")
    y = rng.integers(0, 10, 32).astype("int32")
    for m in models.values():
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.train_on_batch(x, y)  # builds and compiles the step
    steps = 2 if quick else APPLICATION_STEPS
    seconds = {name: [] for name in models}
    for round_ in range(3 if quick else APPLICATION_ROUNDS):
        for name in rotated(models, round_):
            m = models[name]
            start = time.perf_counter()
            for _ in range(steps):
                m.train_on_batch(x, y)
            seconds[name].append((time.perf_counter() - start) / steps)
    rows = []
    for name, rounds in seconds.items():
        rows.append({"model": name, "step_seconds": float(np.median(rounds)), "rounds_seconds": rounds,
                     "steps_per_round": steps, "batch": 32, "input": [96, 96, 3]})
        print(f"  applications {name}: {rows[-1]['step_seconds'] * 1e3:.1f} ms a step", file=sys.stderr, flush=True)
    return rows
