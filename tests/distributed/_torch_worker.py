"""PyTorch worker: one rank of a torch.distributed gloo group on the CPU.

Run as ``python -m tests.distributed._torch_worker RANK WORLD_SIZE PORT``,
one process per rank (MASTER_ADDR=127.0.0.1). Each rank checks its own
slice against a one-device run on the global batch, which it computes
itself from the same seeded data.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import normlab  # noqa: E402
from normlab.testing import reference  # noqa: E402
from tests.distributed import _cases  # noqa: E402

SIZES = [2, 4]  # uneven per-replica batches


def call(layer, x, w, mask):
    """``(y, dx, weights)`` of ``layer`` in training on ``x``, loss ``sum(y * w)``."""
    x = torch.tensor(x, requires_grad=True)
    kwargs = {} if mask is None else {"mask": torch.tensor(mask)}
    y = layer(x, training=True, **kwargs)
    (y * torch.tensor(w)).sum().backward()
    return y.detach().numpy(), x.grad.numpy(), _cases.non_trainable(layer)


def case(name, synchronized, rank, sizes=SIZES, label=None):
    x, w, mask = _cases.data(name, sizes)
    parts = [_cases.split(a, sizes)[rank] for a in (x, w, mask)]

    def check():
        mine = call(_cases.layer(name, synchronized), *parts)
        if synchronized:
            ref = call(_cases.layer(name, False), x, w, mask)
            lo = sum(sizes[:rank])
            ref = (ref[0][lo:lo + sizes[rank]], ref[1][lo:lo + sizes[rank]], ref[2])
        else:
            ref = call(_cases.layer(name, False), *parts)
        _cases.compare([mine], [ref], synchronized=False)  # both already this rank's slice

    _cases.report(label or f"{name}/{'sync' if synchronized else 'local'}", check)


def float64_reference(rank):
    x, w, _ = _cases.data("batch_norm", SIZES, seed=1)
    part = _cases.split(x, SIZES)[rank]
    y = normlab.BatchNormalization(synchronized=True)(torch.tensor(part), training=True)
    lo = sum(SIZES[:rank])
    want = reference.batch_norm(x, epsilon=1e-3)[0][lo:lo + SIZES[rank]]
    _cases.close("outputs vs float64", keras.ops.convert_to_numpy(y), want, atol=1e-4)


def training_step(rank):
    """One SGD step's gradients (all-reduced, as DDP does) and moving statistics equal one device's."""
    def model(synchronized):
        return keras.Sequential([
            keras.Input((3, 4)),
            normlab.BatchNormalization(synchronized=synchronized, momentum=0.0),
            keras.layers.Flatten(),
            keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.5)),
        ])

    x, _, _ = _cases.data("batch_norm", SIZES, seed=2)
    target = np.random.default_rng(3).normal(size=(len(x), 1)).astype("float32")
    results = []
    for synchronized in (False, True):  # one device on the global batch, then this rank's part
        m = model(synchronized)
        params = [v.value for v in m.trainable_variables]
        xs, ts = (_cases.split(a, SIZES)[rank] for a in (x, target)) if synchronized else (x, target)
        y = m(torch.tensor(xs), training=True)
        loss = ((y - torch.tensor(ts)) ** 2).sum() / len(x)  # this rank's share of the global mean
        grads = torch.autograd.grad(loss, params)
        if synchronized:
            for g in grads:
                dist.all_reduce(g)
        results.append([keras.ops.convert_to_numpy(g) for g in grads] + [
            keras.ops.convert_to_numpy(v) for v in m.non_trainable_variables])
    for got, want in zip(results[1], results[0]):
        _cases.close("training step", got, want, rtol=1e-5, atol=2e-5)


def compiled_varying_batches(name, rank):
    """Under ``torch.compile(fullgraph=True)``, per-step batches that make one rank
    retrace while the other runs its cached graph: the ranks' all-reduces must
    stay in step (an extra, independent collective could be scheduled apart)."""
    torch._dynamo.reset()  # each case's compiled step has the same code: a fresh recompilation budget
    steps = [[4, 4], [4, 2], [4, 4], [4, 2], [4, 0]]  # even: ghost batches of 2
    mine, single = _cases.layer(name, True), _cases.layer(name, False)
    mine.build((None,) + _cases.data(name, [1])[0].shape[1:])  # no weights are created in a compiled graph
    step = torch.compile(lambda t: mine(t, training=True), fullgraph=True)
    for i, sizes in enumerate(steps):
        x, _, _ = _cases.data(name, sizes, seed=10 + i)
        y = step(torch.tensor(_cases.split(x, sizes)[rank]))
        want = single(torch.tensor(x), training=True)
        lo = sum(sizes[:rank])
        _cases.close(f"step {i} outputs", y.detach().numpy(), want.detach().numpy()[lo:lo + sizes[rank]], atol=1e-4)
    for key, value in _cases.non_trainable(single).items():
        _cases.close(key, _cases.non_trainable(mine)[key], value, rtol=1e-5, atol=1e-4)


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in _cases.COMPILED:  # first: the process's first synchronized call is a compiled one
            _cases.report(f"{name}/compiled", lambda: compiled_varying_batches(name, rank))
        for name in _cases.names():
            case(name, True, rank)
        case("batch_norm", False, rank)
        case("renorm", False, rank)
        for name in _cases.EMPTY_REPLICA:  # rank 1's share is empty: it still joins every all-reduce
            case(name, True, rank, sizes=_cases.EMPTY_SIZES, label=f"{name}/empty_replica")
        _cases.report("float64_reference", lambda: float64_reference(rank))
        _cases.report("training_step", lambda: training_step(rank))
    finally:
        dist.destroy_process_group()
