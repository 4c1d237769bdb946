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
from normlab import ops as nops
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


@pytest.mark.parametrize("case", SERVED)
def test_a_batch_of_cotangents_matches_one_backward_each(case):
    """``torch.autograd.grad(is_grads_batched=True)`` (what ``jacobian`` and
    ``hessian`` with ``vectorize=True`` run) hands the backward one batched
    cotangent, which the compiled kernels could not read ("Cannot access data
    pointer of Tensor that doesn't have storage")."""
    import torch

    x, dy, gamma, beta = _data(case)
    x, gamma, beta = (t.requires_grad_(True) for t in (x, gamma, beta))
    cotangents = torch.stack([dy, -2.0 * dy, dy.flip(0)])
    y = _apply(case, x, gamma, beta)[0]
    got = torch.autograd.grad(y, [x, gamma, beta], cotangents, is_grads_batched=True, retain_graph=True)
    for i, cotangent in enumerate(cotangents):
        want = torch.autograd.grad(y, [x, gamma, beta], cotangent, retain_graph=True)
        for got_part, want_part in zip(got, want):
            np.testing.assert_allclose(got_part[i].numpy(), want_part.numpy(), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vectorized_jacobian_and_hessian_match_the_general_path(dtype):
    import torch

    x, _, gamma, beta = _data("gn-nhwc", dtype=dtype)
    x = x[:1, :2, :3].contiguous()
    mean, variance = x.float().mean((0, 1, 2)), x.float().var((0, 1, 2))

    def norms(t):
        given = nops.batch_norm(t, mean=mean, variance=variance, axis=3, gamma=gamma, beta=beta)
        return torch.cat([_apply("gn-nhwc", t, gamma, beta)[0], given, nops.layer_norm(t, [3])])

    got = torch.autograd.functional.jacobian(norms, x, vectorize=True)
    hessian = torch.autograd.functional.hessian(lambda t: norms(t).float().pow(3).sum(), x, vectorize=True)
    with backends.disabled():
        want = torch.autograd.functional.jacobian(norms, x, vectorize=True)
        want_hessian = torch.autograd.functional.hessian(
            lambda t: norms(t).float().pow(3).sum(), x, vectorize=True)
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), rtol=tolerance, atol=tolerance)
    scale = float(want_hessian.abs().max())
    np.testing.assert_allclose(hessian.float().numpy() / scale, want_hessian.float().numpy() / scale,
                               rtol=tolerance, atol=tolerance)
