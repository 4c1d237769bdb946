"""The gradient through the batch statistics a torch fast path returns
(``batch_norm(..., training=True, return_stats=True)``), at offsets.

The backward formed ``x - (shift + mean)`` after the sum had rounded at the
offset's scale: the variance's gradient was 1.3e-4 off at 1e4 and 5.2e-3 at
1e6, relative, against the general path's 1e-7.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch hooks")


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
