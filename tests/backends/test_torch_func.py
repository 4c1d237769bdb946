"""The ops the torch fast paths serve, under ``torch.func`` transforms and
forward-mode AD: ``vmap`` (batches of models or of inputs), per-sample
gradients (``vmap`` of ``grad``, as differentially private training takes
them, where group norm replaces batch norm) and ``jvp``. The fast paths'
``autograd.Function`` classes support none of these, so the hooks decline there
(``normlab.backends.torch.traced``); these tests fail if they do not."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from tests.backends.test_fast_paths import CASES, DECLINED, _apply, _inputs

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.func transforms"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]

SERVED = sorted(set(CASES) - DECLINED)


def _data(case, offset=3.0, dtype="float32"):
    import torch

    x, dy, gamma, beta = _inputs(case, offset)
    return [torch.tensor(a, dtype=getattr(torch, dtype)) for a in (x, dy, gamma, beta)]


@pytest.mark.parametrize("case", SERVED)
def test_vmap_over_a_stack_of_inputs_matches_a_loop(case):
    import torch

    x, _, gamma, beta = _data(case)
    stack = torch.stack([x, 2.0 * x - 1.0, x.flip(0)])

    def norm(t):
        return _apply(case, t, gamma, beta)[0]

    got = torch.func.vmap(norm)(stack)
    want = torch.stack([norm(t) for t in stack])  # eager: the fast path serves each
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("case", SERVED)
def test_per_sample_parameter_gradients_match_one_backward_per_sample(case):
    import torch

    x, dy, gamma, beta = _data(case)

    def loss(xi, dyi, g, b):  # one sample, kept as a batch of 1
        return (_apply(case, xi[None], g, b)[0] * dyi[None]).sum()

    got = torch.func.vmap(torch.func.grad(loss, argnums=(2, 3)), in_dims=(0, 0, None, None))(x, dy, gamma, beta)
    for i in range(x.shape[0]):
        g, b = gamma.clone().requires_grad_(True), beta.clone().requires_grad_(True)
        want = torch.autograd.grad(loss(x[i], dy[i], g, b), [g, b])
        for got_part, want_part in zip(got, want):
            np.testing.assert_allclose(got_part[i].numpy(), want_part.numpy(), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("case", SERVED)
def test_forward_mode_matches_the_general_path_in_float64(case):
    import torch
    import torch.autograd.forward_ad as fwAD

    x, _, gamma, beta = _data(case)
    tangent = torch.tensor(np.random.default_rng(5).normal(size=tuple(x.shape)), dtype=torch.float32)
    with backends.disabled():
        _, want = torch.func.jvp(lambda t: _apply(case, t, gamma.double(), beta.double())[0],
                                 (x.double(),), (tangent.double(),))
    _, got = torch.func.jvp(lambda t: _apply(case, t, gamma, beta)[0], (x,), (tangent,))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=2e-4)
    with fwAD.dual_level():
        y = _apply(case, fwAD.make_dual(x, tangent), gamma, beta)[0]
        np.testing.assert_allclose(fwAD.unpack_dual(y).tangent.numpy(), want.numpy(), rtol=1e-4, atol=2e-4)
