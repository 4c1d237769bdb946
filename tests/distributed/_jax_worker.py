"""JAX worker: two host CPU devices, via shard_map, pmap and keras.distribution.DataParallel.

Run as ``python -m tests.distributed._jax_worker`` (a fresh process: XLA_FLAGS
must be set before JAX initializes its devices).
"""

import contextlib
import os
import time

STARTED = time.perf_counter()
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import normlab  # noqa: E402
from normlab.testing import reference  # noqa: E402
from tests.distributed import _cases  # noqa: E402

SIZES = [4, 4]  # shard_map and pmap split the batch evenly
mesh = Mesh(jax.devices(), ("data",))


def built(name, synchronized, x):
    layer = _cases.layer(name, synchronized)
    layer.build((None,) + x.shape[1:])
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    return layer, tv, ntv, [v.name for v in layer.non_trainable_variables]


def forward(layer, tv, ntv, x, mask):
    kwargs = {} if mask is None else {"mask": mask}
    return layer.stateless_call(tv, ntv, x, training=True, **kwargs)


def single(name, x, w, mask):
    layer, tv, ntv, names = built(name, False, x)

    def loss(x):
        y, new = forward(layer, tv, ntv, x, mask)
        return jnp.sum(y * w), (y, new)

    (_, (y, new)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x))
    return np.asarray(y), np.asarray(dx), dict(zip(names, map(np.asarray, new)))


def sharded(name, synchronized, x, w, mask):
    """shard_map over the mesh axis "data"; the gradient is taken of the global loss."""
    layer, tv, ntv, names = built(name, synchronized, x)

    def local(tv, ntv, x, *mask):
        with normlab.distributed.axis_name("data"):
            return forward(layer, tv, ntv, x, mask[0] if mask else None)

    extra = () if mask is None else (jnp.asarray(mask),)
    stats = P() if synchronized else P("data")  # synchronized statistics are the same on every device
    mapped = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P("data")) + (P("data"),) * len(extra), out_specs=(P("data"), stats)
    )

    def loss(x):
        y, new = mapped(tv, ntv, x, *extra)
        return jnp.sum(y * w), (y, new)

    (_, (y, new)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x))
    y, dx = _cases.split(np.asarray(y), SIZES), _cases.split(np.asarray(dx), SIZES)
    per = [np.asarray(v) if synchronized else np.split(np.asarray(v), 2) for v in new]
    return [
        (y[i], dx[i], {k: (v if synchronized else v[i]) for k, v in zip(names, per)}) for i in range(2)
    ]


def pmapped(name, x, w):
    """pmap over "data", each device differentiating its own loss (the usual pmap training step)."""
    layer, tv, ntv, names = built(name, True, x)

    def step(x, w):
        def loss(x):
            with normlab.distributed.axis_name("data"):
                y, new = forward(layer, tv, ntv, x, None)
            return jnp.sum(y * w), (y, new)

        (_, (y, new)), dx = jax.value_and_grad(loss, has_aux=True)(x)
        return y, dx, new

    y, dx, new = jax.pmap(step, axis_name="data")(*(jnp.asarray(a).reshape((2, -1) + a.shape[1:]) for a in (x, w)))
    return [(np.asarray(y[i]), np.asarray(dx[i]), {k: np.asarray(v[i]) for k, v in zip(names, new)}) for i in range(2)]


def case(name, synchronized, runner="shard_map"):
    x, w, mask = _cases.data(name, SIZES)

    def check():
        if runner == "pmap":
            replicas = pmapped(name, x, w)
        else:
            replicas = sharded(name, synchronized, x, w, mask)
        if synchronized:
            ref = single(name, x, w, mask)
        else:
            ref = [single(name, *p) for p in zip(*(_cases.split(a, SIZES) for a in (x, w, mask)))]
        _cases.compare(replicas, ref, synchronized)

    label = "sync" if synchronized else "local"
    _cases.report(f"{name}/{label}" + ("/pmap" if runner == "pmap" else ""), check)


#: Per-sample norms under explicit sharding: name -> (factory, per-sample shape).
PER_SAMPLE = {
    "group_norm": (lambda: normlab.GroupNormalization(groups=2), (3, 4)),
    "group_norm_channels_first": (lambda: normlab.GroupNormalization(groups=2, axis=1), (4, 3)),
    "instance_norm": (lambda: normlab.InstanceNormalization(), (3, 4)),
    "layer_norm": (lambda: normlab.LayerNormalization(), (3, 4)),
    "layer_norm_all": (lambda: normlab.LayerNormalization(axis=[1, 2]), (3, 4)),
    "rms_norm": (lambda: normlab.RMSNormalization(), (3, 4)),
}


def explicit(name, sizes):
    """The batch split over the devices by JAX's explicit sharding (sharding in
    types, where a slice of one sample is a type error): outputs, input
    gradients and moving statistics equal one device's on the global batch,
    with the fast paths on and off, and the output stays split."""
    from jax.sharding import AxisType, NamedSharding

    if name in PER_SAMPLE:
        factory, shape = PER_SAMPLE[name]
        rng = np.random.default_rng(5)
        x = (1e4 + rng.normal(size=(sum(sizes),) + shape)).astype("float32")
        w, mask = rng.normal(size=x.shape).astype("float32"), None
    elif name == "batch_norm_mask_long":  # 2**17 elements: where the masked shift is gathered, on one device
        factory = lambda: normlab.BatchNormalization(momentum=0.5)  # noqa: E731
        rng = np.random.default_rng(6)
        x = (1e4 + rng.normal(size=(sum(sizes), 256, 16))).astype("float32")
        w, mask = rng.normal(size=x.shape).astype("float32"), rng.random(x.shape[:2]) < 0.7
    else:
        factory, (x, w, mask) = (lambda: _cases.layer(name, False)), _cases.data(name, sizes)
    layer = factory()
    layer.build((None,) + x.shape[1:])
    tv, ntv = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]
    names = [v.name for v in layer.non_trainable_variables]
    training = {"training": True} if name not in PER_SAMPLE else {}

    def loss(x, mask):
        y, new = layer.stateless_call(tv, ntv, x, **training, **({} if mask is None else {"mask": mask}))
        return jnp.sum(y * w), (y, new)

    step = jax.value_and_grad(loss, has_aux=True)
    (_, (y, new)), dx = jax.jit(step)(jnp.asarray(x), mask)
    want = (np.asarray(y), np.asarray(dx), dict(zip(names, map(np.asarray, new))))
    mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Explicit,))
    for fast in (True, False):
        with jax.set_mesh(mesh), (contextlib.nullcontext() if fast else normlab.backends.disabled()):
            split = [None if a is None else jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, mask)]
            (_, (y, new)), dx = jax.jit(step)(*split)
        assert jax.typeof(y).sharding.spec[0] == "data", jax.typeof(y).sharding
        _cases.compare([(np.asarray(y), np.asarray(dx), dict(zip(names, map(np.asarray, new))))], want, True)


def split_weights(name):
    """``gamma`` and ``beta`` split over a model axis, the input's channels not
    (replicated, or its batch split over a data axis of one device): the
    fast paths' custom backward gave ``dx`` the weights' sharding, which
    JAX's type check rejected. Gradients equal one device's; ghost batches
    keep the channels' split in their output (no gather)."""
    from jax.sharding import AxisType, NamedSharding

    layer = {"layer_norm": lambda: normlab.LayerNormalization(), "rms_norm": lambda: normlab.RMSNormalization(),
             "batch_norm": lambda: normlab.BatchNormalization(), "group_norm": lambda: normlab.GroupNormalization(groups=2),
             "instance_norm": lambda: normlab.InstanceNormalization(),
             "ghost": lambda: normlab.BatchNormalization(virtual_batch_size=2)}[name]()
    rng = np.random.default_rng(7)
    x = (3.0 + rng.normal(size=(4, 3, 4))).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    layer.build(x.shape)
    tv, ntv = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]
    training = {"training": True} if name in ("batch_norm", "ghost") else {}

    def loss(tv, x):
        y = layer.stateless_call(tv, ntv, x, **training)[0]
        return jnp.sum(y * w), y

    step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    want, _ = step(tv, jnp.asarray(x))
    mesh = jax.make_mesh((1, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        split = [jax.device_put(t, NamedSharding(mesh, P("model"))) for t in tv]
        for spec in (P(), P("data")):
            got, y = step(split, jax.device_put(x, NamedSharding(mesh, spec)))
            for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                _cases.close(f"{spec} gradient", g, v, rtol=1e-5, atol=1e-5 * float(np.abs(np.asarray(v)).max()))
            if name == "ghost" and spec == P("data"):
                assert tuple(jax.typeof(y).sharding.spec) == ("data", None, "model"), jax.typeof(y).sharding


def split_kernel():
    """Spectral normalization of a ``Dense`` kernel whose columns JAX's
    explicit sharding splits over a model axis: the power iteration's ``u``
    takes the kernel's split (a select with the old, replicated ``u`` was a
    type error). Outputs, gradients and the new ``u`` equal one device's."""
    from jax.sharding import AxisType, NamedSharding

    keras.utils.set_random_seed(3)
    layer = normlab.SpectralNormalization(keras.layers.Dense(8))
    x = np.random.default_rng(3).normal(size=(4, 6)).astype("float32")
    layer.build(x.shape)
    tv, ntv = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]

    def loss(tv, x, ntv):
        y, new = layer.stateless_call(tv, ntv, x, training=True)
        return jnp.sum(y * y), (y, new)

    step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    want = step(tv, jnp.asarray(x), ntv)
    mesh = jax.make_mesh((2,), ("model",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        split = [jax.device_put(t, NamedSharding(mesh, P(*[None] * (t.ndim - 1), "model"))) for t in tv]
        replicated = [jax.device_put(t, NamedSharding(mesh, P())) for t in (x, *ntv)]
        got = step(split, replicated[0], replicated[1:])
    for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _cases.close("split kernel", g, v, rtol=1e-5, atol=1e-5 * float(np.abs(np.asarray(v)).max()))


def float64_reference():
    x, w, _ = _cases.data("batch_norm", SIZES, seed=1)
    y = np.concatenate([r[0] for r in sharded("batch_norm", True, x, w, None)])
    _cases.close("outputs vs float64", y, reference.batch_norm(x, epsilon=1e-3)[0], atol=1e-4)


def data_parallel():
    """Under keras.distribution.DataParallel the statistics are the global batch's, with no flag.

    The batch is sharded over both devices; the compiled step contains
    XLA's all-reduces; outputs, gradients and moving statistics equal one
    device on the global batch, and differ from those of each shard alone.
    """
    x, w, _ = _cases.data("batch_norm", SIZES, seed=4)
    want = single("batch_norm", x, w, None)
    halves = [single("batch_norm", xi, wi, None) for xi, wi in zip(_cases.split(x, SIZES), _cases.split(w, SIZES))]
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        layer, tv, ntv, names = built("batch_norm", False, x)
        layout = keras.distribution.distribution().get_data_layout(x.shape)
        xs = keras.distribution.distribute_tensor(jnp.asarray(x), layout)
        assert len(xs.sharding.device_set) == 2 and not xs.sharding.is_fully_replicated, xs.sharding

        def loss(x):
            y, new = forward(layer, tv, ntv, x, None)
            return jnp.sum(y * w), (y, new)

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        hlo = step.lower(xs).compile().as_text()
        assert "all-reduce" in hlo, "no cross-device reduction in the compiled step"
        (_, (y, new)), dx = step(xs)
        assert not y.sharding.is_fully_replicated, y.sharding
    finally:
        keras.distribution.set_distribution(None)
    got = (np.asarray(y), np.asarray(dx), dict(zip(names, map(np.asarray, new))))
    _cases.compare([got], want, synchronized=True)
    half = np.asarray(got[2]["moving_variance"])
    assert not np.allclose(half, halves[0][2]["moving_variance"]), "statistics of one shard only"


def data_parallel_fit():
    """``model.fit`` under DataParallel: one SGD step equals one device on the global batch."""
    def model():
        return keras.Sequential([
            keras.Input((3, 4)),
            normlab.BatchNormalization(synchronized=True, momentum=0.0),
            keras.layers.Flatten(),
            keras.layers.Dense(1, kernel_initializer="ones"),
        ])

    x, _, _ = _cases.data("batch_norm", [4, 4], seed=2)
    target = np.random.default_rng(3).normal(size=(8, 1)).astype("float32")
    alone = model()
    alone.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    alone.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        spread = model()
        spread.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        spread.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.distribution.set_distribution(None)
    for got, want, weight in zip(spread.get_weights(), alone.get_weights(), spread.weights):
        _cases.close(f"fit: {weight.path}", got, want, rtol=1e-6, atol=2e-5)


if __name__ == "__main__":
    print(f"startup {time.perf_counter() - STARTED:.1f} s", flush=True)
    assert jax.device_count() == 2, jax.devices()
    for name in _cases.names():
        case(name, True)
    case("batch_norm", False)
    case("ghost", False)
    case("batch_norm", True, runner="pmap")
    case("renorm_ghost", True, runner="pmap")
    _cases.report("float64_reference", float64_reference)
    _cases.report("data_parallel", data_parallel)
    _cases.report("data_parallel_fit", data_parallel_fit)
    for name in [*_cases.names(), *PER_SAMPLE]:
        _cases.report(f"{name}/explicit", lambda: explicit(name, SIZES))
    # three ghost batches of two over two devices: the batch is gathered to split it
    _cases.report("ghost/explicit/gathered", lambda: explicit("ghost", [3, 3]))
    _cases.report("batch_norm_mask_long/explicit", lambda: explicit("batch_norm_mask_long", [16, 16]))
    for name in ["layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "ghost"]:
        _cases.report(f"{name}/explicit/split_weights", lambda: split_weights(name))
    _cases.report("spectral_norm/explicit/split_kernel", split_kernel)
