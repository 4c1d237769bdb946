"""The gradient through the batch statistics a torch fast path returns
(``batch_norm(..., training=True, return_stats=True)``), at offsets.

The backward formed ``x - (shift + mean)`` after the sum had rounded at the
offset's scale: the variance's gradient was 1.3e-4 off at 1e4 and 5.2e-3 at
1e6, relative, against the general path's 1e-7.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch hooks"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]


@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("cpu_kernels", ["1", "0"])
@pytest.mark.parametrize("shape", [(16, 3, 4), (16, 4, 3)])
def test_statistics_gradient_is_exact_at_offsets(offset, cpu_kernels, shape, monkeypatch):
    import torch

    monkeypatch.setenv("NORMLAB_CPU_KERNELS", cpu_kernels)
    gen = torch.Generator().manual_seed(0)
    x32 = (offset + torch.randn(*shape, dtype=torch.float64, generator=gen)).float()
    c = shape[-1]
    wm, wv = torch.randn(c, dtype=torch.float64, generator=gen), torch.randn(c, dtype=torch.float64, generator=gen)

    def gradient(x, fast):
        x = x.clone().requires_grad_(True)
        if fast:
            _, mean, var = nops.batch_norm(x, axis=-1, training=True, return_stats=True)
        else:
            with backends.disabled():
                _, mean, var = nops.batch_norm(x, axis=-1, training=True, return_stats=True)
        ((mean - offset) * wm.to(mean.dtype) + var * wv.to(var.dtype)).sum().backward()
        return x.grad.double().numpy()

    want = gradient(x32.double(), fast=False)
    got = gradient(x32, fast=True)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-6


# A double backward: the backward took x - mean with the forward's mean as a constant, so a
# loss on both the mean and the variance missed the mean's own dependence on x (5e-2 off,
# float64, with and without the C kernels).


def _second_order(x0, use_y, fast):
    import torch

    x = x0.clone().requires_grad_()
    w = torch.arange(x.shape[-1] if fast[1] else x.shape[1], dtype=x.dtype)
    axis = -1 if fast[1] else 1
    with contextlib.nullcontext() if fast[0] else backends.disabled():
        y, mean, var = nops.batch_norm(x, training=True, axis=axis, return_stats=True)
    loss = (mean * w).sum() + (var * w).sum() + use_y * (y * torch.cos(torch.arange(y.numel(), dtype=x.dtype)
                                                                       ).view(y.shape)).sum()
    (dx,) = torch.autograd.grad(loss, x, create_graph=True)
    (ddx,) = torch.autograd.grad((dx * dx).sum(), x)
    return ddx


@pytest.mark.parametrize("kernels", ["0", "1"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("use_y", [0.0, 1.0])
def test_double_backward_through_mean_and_variance(monkeypatch, kernels, dtype, channels_last, use_y):
    import torch

    monkeypatch.setenv("NORMLAB_CPU_KERNELS", kernels)
    torch.manual_seed(0)
    shape = (3, 70, 16) if channels_last else (3, 16, 70)
    x = (torch.randn(*shape, dtype=torch.float64) * 3 + 5).to(getattr(torch, dtype))
    got = _second_order(x, use_y, (True, channels_last))
    expected = _second_order(x.double(), use_y, (False, channels_last)).to(got.dtype)
    scale = expected.abs().max()
    assert ((got - expected).abs().max() / scale).item() < (1e-12 if dtype == "float64" else 1e-5)
