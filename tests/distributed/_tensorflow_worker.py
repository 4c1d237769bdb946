"""TensorFlow worker: MirroredStrategy over two logical CPU devices.

Run as ``python -m tests.distributed._tensorflow_worker`` (a fresh process:
the logical devices must be configured before TensorFlow initializes).
"""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import normlab  # noqa: E402
from normlab.testing import reference  # noqa: E402
from tests.distributed import _cases  # noqa: E402

SIZES = [2, 4]  # uneven per-replica batches
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
tf.get_logger().setLevel("ERROR")  # each case traces its own step function


def call(layer, x, w, mask):
    """``(y, dx)`` of ``layer`` in training on ``x``, loss ``sum(y * w)``."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True, mask=mask) if mask is not None else layer(x, training=True)
        loss = tf.reduce_sum(y * w)
    return y, tape.gradient(loss, x)


def single(name, x, w, mask):
    layer = _cases.layer(name, False)
    y, dx = call(layer, tf.constant(x), tf.constant(w), None if mask is None else tf.constant(mask))
    return y.numpy(), dx.numpy(), _cases.non_trainable(layer)


def distributed(name, synchronized, x, w, mask, sizes=SIZES):
    with strategy.scope():
        layer = _cases.layer(name, synchronized)
        layer.build((None,) + x.shape[1:])
    parts = [_cases.split(a, sizes) for a in (x, w, mask)]

    def per_replica(i):
        return strategy.experimental_distribute_values_from_function(
            lambda context: None if parts[i][0] is None else tf.constant(parts[i][context.replica_id_in_sync_group])
        )

    xs, ws = per_replica(0), per_replica(1)
    masks = per_replica(2) if mask is not None else None

    @tf.function
    def step(xs, ws, masks):
        return strategy.run(call, args=(layer, xs, ws, masks))

    ys, dxs = step(xs, ws, masks)
    ys, dxs = strategy.experimental_local_results(ys), strategy.experimental_local_results(dxs)
    # Each replica's own copy of every moving statistic (a MirroredVariable's per-device values).
    copies = {
        v.name: strategy.experimental_local_results(v.value) for v in layer.non_trainable_weights
    }
    return [
        (ys[i].numpy(), dxs[i].numpy(), {k: c[i].numpy() for k, c in copies.items()})
        for i in range(len(sizes))
    ]


def case(name, synchronized, sizes=SIZES, label=None):
    x, w, mask = _cases.data(name, sizes)

    def check():
        replicas = distributed(name, synchronized, x, w, mask, sizes)
        if synchronized:
            ref = single(name, x, w, mask)
        else:
            ref = [single(name, *p) for p in zip(*(_cases.split(a, sizes) for a in (x, w, mask)))]
        _cases.compare(replicas, ref, synchronized)

    _cases.report(label or f"{name}/{'sync' if synchronized else 'local'}", check)


def float64_reference():
    """Synchronized statistics at an offset of 1e4 match the float64 formula on the global batch."""
    x, w, _ = _cases.data("batch_norm", SIZES, seed=1)
    y = np.concatenate([r[0] for r in distributed("batch_norm", True, x, w, None)])
    _cases.close("outputs vs float64", y, reference.batch_norm(x, epsilon=1e-3)[0], atol=1e-4)


def fit():
    """``model.fit`` under the strategy: one SGD step equals one device on the global batch."""
    def model(synchronized):
        return keras.Sequential([
            keras.Input((3, 4)),
            normlab.BatchNormalization(synchronized=synchronized, momentum=0.0),
            keras.layers.Flatten(),
            keras.layers.Dense(1, kernel_initializer="ones"),
        ])

    x, _, _ = _cases.data("batch_norm", [4, 4], seed=2)
    target = np.random.default_rng(3).normal(size=(8, 1)).astype("float32")
    with strategy.scope():
        synced = model(True)
        synced.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    alone = model(False)
    alone.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    for m in (synced, alone):
        m.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, want, weight in zip(synced.get_weights(), alone.get_weights(), synced.weights):
        _cases.close(f"fit: {weight.path}", got, want, rtol=1e-6, atol=2e-5)


def fit_partial_batch_local():
    """The same ``fit`` with per-replica statistics (``synchronized=False``, the
    default): the empty share failed in a reshape of its statistics' sample row."""
    x, _, _ = _cases.data("batch_norm", [9], seed=4)
    x = np.concatenate([x, x], axis=-1)  # 8 channels: TensorFlow's fused kernel
    target = np.random.default_rng(5).normal(size=(9, 1)).astype("float32")
    with strategy.scope():
        m = keras.Sequential([keras.Input((3, 8)), normlab.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    m.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v in m.layers[0].non_trainable_weights:
        assert np.isfinite(v.numpy()).all(), v.name


def fit_partial_batch():
    """``fit`` on 9 samples in batches of 8: the last global batch (1 sample) leaves the
    second replica's share empty, and every replica's copy of the moving statistics
    must still be the global batch's (it kept its old ones: ``predict`` then differed
    by replica)."""
    x, _, _ = _cases.data("batch_norm", [9], seed=4)
    target = np.random.default_rng(5).normal(size=(9, 1)).astype("float32")
    with strategy.scope():
        m = keras.Sequential([keras.Input((3, 4)), normlab.BatchNormalization(synchronized=True, momentum=0.0),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    m.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    layer = m.layers[0]
    want = {"moving_mean": x[8:].mean(axis=(0, 1)), "moving_variance": x[8:].var(axis=(0, 1))}
    for v in layer.non_trainable_weights:
        for i, copy in enumerate(strategy.experimental_local_results(v.value)):
            _cases.close(f"replica {i} {v.name}", copy.numpy(), want[v.name], rtol=1e-5, atol=1e-4)


def weight_norm_init(first_call):
    """``WeightNormalization(data_init=True)`` under the strategy: each replica
    initialized from its own share (different ``g`` and bias per replica:
    ``predict`` depended on the replica a sample landed on). A first call
    outside ``fit`` (the cross-replica context) initializes every copy from the
    whole batch, as one device does; ``fit`` without one warns, keeps ``g`` and
    the bias alike on every replica, and marks the layer initialized."""
    import warnings

    x, _, _ = _cases.data("batch_norm", [8], seed=6)
    alone = normlab.WeightNormalization(keras.layers.Dense(3))
    alone(x)
    with strategy.scope():
        wrapped = normlab.WeightNormalization(keras.layers.Dense(3))
        model = keras.Sequential([keras.Input(x.shape[1:]), wrapped])
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    wrapped.set_weights(alone.get_weights())
    wrapped.initialized.assign(False)
    wrapped.g.assign(np.ones(3, "float32"))
    wrapped.layer.bias.assign(np.zeros(3, "float32"))
    fresh = {"g": wrapped.g.numpy(), "bias": wrapped.layer.bias.numpy()}
    if first_call:
        model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.zeros((8, 3, 3), "float32"), batch_size=8, epochs=1, shuffle=False, verbose=0)
    warned = any("tf.distribute" in str(w.message) for w in caught)
    assert warned != first_call, f"warned={warned} with first_call={first_call}"
    want = {"g": alone.g, "bias": alone.layer.bias} if first_call else fresh
    for v in (wrapped.g, wrapped.layer.bias, wrapped.initialized):
        for i, copy in enumerate(strategy.experimental_local_results(v.value)):
            value = True if v is wrapped.initialized else want[v.name]
            _cases.close(f"replica {i} {v.name}", copy.numpy(), np.asarray(value), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    for name in _cases.names():
        case(name, True)
    case("batch_norm", False)
    case("renorm", False)
    for name in _cases.EMPTY_REPLICA:
        case(name, True, sizes=_cases.EMPTY_SIZES, label=f"{name}/empty_replica")
    _cases.report("float64_reference", float64_reference)
    _cases.report("fit", fit)
    _cases.report("fit_partial_batch", fit_partial_batch)
    _cases.report("fit_partial_batch_local", fit_partial_batch_local)
    _cases.report("weight_norm_init/first_call", lambda: weight_norm_init(True))
    _cases.report("weight_norm_init/fit", lambda: weight_norm_init(False))
