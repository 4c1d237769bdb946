"""The torch fast paths stand aside for tensors that are not plain and for
tracing dispatch modes: their compiled kernels read ``data_ptr()`` memory
outside the dispatcher, which a wrapper subclass (DTensor-like) or a fake
tensor does not have (a segmentation fault, or gamma read as absent: 1.9
off), and which ``make_fx`` would not record (its replayed graph was 1.9
off). Each case must give the general path's result.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch hooks"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]


def _two_tensor():
    pytest.importorskip("torch.testing._internal.two_tensor")
    from torch.testing._internal.two_tensor import TwoTensor

    return TwoTensor


def _x(*shape):
    import torch

    return 3 + torch.randn(*shape, generator=torch.Generator().manual_seed(0))


OPS = {
    "layer_norm": lambda x, g: nops.layer_norm(x, -1, gamma=g),
    "group_norm": lambda x, g: nops.group_norm(x, 2, -1, gamma=g),
    "batch_norm": lambda x, g: nops.batch_norm(x, training=True, axis=-1, gamma=g),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("wrapped", ["x", "gamma"])
def test_a_wrapper_subclass_takes_the_general_path(op, wrapped):
    import torch

    two = _two_tensor()
    x, g = _x(2, 5, 8), torch.rand(8, generator=torch.Generator().manual_seed(1)) + 1
    with backends.disabled():
        want = OPS[op](x, g)
    if wrapped == "x":
        got = OPS[op](two(x, x.clone()), g)
        got = got.a  # TwoTensor carries both results
    else:
        got = OPS[op](x, two(g, g.clone()))
        got = got.a if isinstance(got, two) else got
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("op", list(OPS))
def test_fake_tensors_give_shapes(op):
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = OPS[op](torch.empty(2, 5, 8), torch.ones(8))
    assert tuple(y.shape) == (2, 5, 8)


@pytest.mark.parametrize("op", list(OPS))
def test_make_fx_records_a_graph_that_replays(op):
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.ones(8) * 1.5
    graph = make_fx(lambda x: OPS[op](x, g))(_x(4, 8))
    x2 = _x(4, 8) * 2 - 1
    with backends.disabled():
        want = OPS[op](x2, g)
    np.testing.assert_allclose(graph(x2).numpy(), want.numpy(), atol=1e-5)


def test_a_number_as_gamma_is_a_contiguous_parameter_for_the_kernels():
    """``check_param`` broadcasts a number to a stride-0 view; the Triton
    parameter adapter makes it contiguous instead of declining."""
    import torch

    pytest.importorskip("triton")
    from normlab.backends.triton import runtime

    x = torch.ones(2, 8)
    gamma = torch.tensor(2.0).expand(8)
    assert not gamma.is_contiguous()
    got = runtime.param(gamma, x, (8,))
    assert got is not False and got.is_contiguous() and torch.equal(got, torch.full((8,), 2.0))


def test_parameters_on_another_device_are_declined():
    """A gamma on another device than ``x`` reached the compiled CPU kernels,
    which read its memory by pointer (a GPU's: a segmentation fault; a meta
    tensor's: gamma read as absent)."""
    import torch

    from normlab.backends import cpu
    from normlab.backends import torch as hooks

    x, elsewhere = _x(2, 5, 8), torch.ones(8, device="meta")
    calls = {
        "group_norm": lambda g: hooks.group_norm(x, groups=2, axis=2, gamma=g, beta=None, epsilon=1e-3),
        "layer_norm": lambda g: hooks.layer_norm(x, axes=[2], gamma=g, beta=None, epsilon=1e-3),
        "batch_norm_train": lambda g: hooks.batch_norm_train(x, axis=2, gamma=None, beta=g, epsilon=1e-3),
        "batch_norm_infer": lambda g: hooks.batch_norm_infer(
            x, axis=2, mean=torch.zeros(8), variance=g, gamma=None, beta=None, epsilon=1e-3),
    }
    if not cpu.available():  # inference batch norm has only the compiled kernels
        del calls["batch_norm_infer"]
    for name, call in calls.items():
        assert call(torch.ones(8)) is not None, f"{name}: declined a gamma on x's device"
        assert call(elsewhere) is None, f"{name}: served a parameter on another device"
        assert call(keras.Variable(np.ones(8, "float32"), trainable=False)) is not None, f"{name}: declined a variable"
