"""Double backward through the Triton functions (a gradient penalty, as in
WGAN-GP or R1 regularization): under ``create_graph`` their backward
differentiates the same normalization in plain ops, against float64 closed
forms differentiated twice by autograd. Marked ``triton``; runs in Triton's
interpreter on a machine without CUDA, compiled on a GPU (see test_triton.py).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the Triton kernels take torch tensors")

from tests.backends import _triton_support as support  # noqa: E402

CUDA, MODE, WHY, DEVICE = support.prepare()  # before triton is first imported (TRITON_INTERPRET)

from normlab.backends import triton as nt  # noqa: E402
from normlab.backends.triton import channels_last, row_norm  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.once, pytest.mark.skipif(MODE is None, reason=WHY)]
EPSILON = 1e-3

#: (dtype, offset, spread), as test_triton.py's variants.
VARIANTS = {
    "f32": (torch.float32, 0.0, 1.0),
    "f32-1e4": (torch.float32, 1e4, 1.0),
    "f32-1e6": (torch.float32, 1e6, 1.0),
    "f16-1e3": (torch.float16, 1e3, 8.0),
    "bf16-1e2": (torch.bfloat16, 1e2, 8.0),
}

#: Relative error of the penalty's gradients: one more derivative than test_triton.py's outputs.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}

#: name: (hook, shape, hook arguments)
CASES = {
    "group": (nt.group_norm, (2, 5, 6, 8), dict(groups=4, axis=3)),
    "group-one": (nt.group_norm, (2, 5, 6, 8), dict(groups=1, axis=3)),
    "instance-odd": (nt.group_norm, (2, 7, 5), dict(groups=5, axis=2)),
    "layer": (nt.layer_norm, (6, 12), dict(axes=[1])),
    "layer-two-axes": (nt.layer_norm, (3, 4, 6), dict(axes=[1, 2])),
    "rms": (nt.rms_norm, (6, 12), dict(axes=[1])),
}


def _closed_form(hook, x, gamma, beta, groups=None, axis=None, axes=None):
    """The normalization in float64 plain ops, from its definition."""
    if hook is nt.group_norm:
        n, c = x.shape[0], x.shape[-1]
        g = x.reshape(n, -1, groups, c // groups)
        y = ((g - g.mean((1, 3), keepdim=True)) / torch.sqrt(g.var((1, 3), unbiased=False, keepdim=True) + EPSILON))
        y = y.reshape(x.shape)
    else:
        rows = x.reshape(-1, x[0].numel() if len(axes) == x.ndim - 1 else x.shape[-1])
        mean = rows.mean(1, keepdim=True) if hook is nt.layer_norm else 0.0
        y = ((rows - mean) / torch.sqrt(((rows - mean) ** 2).mean(1, keepdim=True) + EPSILON)).reshape(x.shape)
    param_shape = x.shape[-1:] if hook is nt.group_norm else tuple(x.shape[a] for a in axes)
    y = y if gamma is None else y * gamma.reshape(param_shape)
    return y if beta is None else y + beta.reshape(param_shape)


def _penalty_grads(norm, x, dy, gamma, beta):
    """The gradients of ``|d(sum(y * dy))/dx|^2`` for ``x``, ``gamma``, ``beta``."""
    x = x.detach().clone().requires_grad_(True)
    y = norm(x, gamma, beta)
    (dx,) = torch.autograd.grad((y * dy).sum(), x, create_graph=True)
    wrt = [t for t in (x, gamma, beta) if t is not None]
    return dx, torch.autograd.grad((dx.float() ** 2).sum(), wrt, allow_unused=True)


def _compare(case, variant, *, affine=(True, True)):
    hook, shape, kwargs = CASES[case]
    dtype, offset, spread = VARIANTS[variant]
    x, dy = support.inputs(shape, dtype, offset=offset, spread=spread)
    pshape = shape[-1:] if hook is nt.group_norm else tuple(shape[a] for a in kwargs["axes"])
    gamma, beta = support.params(pshape, DEVICE)
    gamma, beta = (gamma if affine[0] else None), (beta if affine[1] else None)

    def kernels(x, g, b):
        with nt.interpret_on_cpu():
            y = hook(x, gamma=g, beta=b, epsilon=EPSILON, **kwargs)
        assert y is not None, "the kernels declined"
        return y

    got_dx, got = _penalty_grads(kernels, x.to(DEVICE), dy.to(DEVICE), gamma, beta)
    p64 = [None if t is None else t.detach().cpu().double().requires_grad_(True) for t in (gamma, beta)]
    want_dx, want = _penalty_grads(lambda x, g, b: _closed_form(hook, x, g, b, **kwargs), x.double(), dy.double(),
                                   *p64)
    tol = TOLERANCE[dtype]

    def rounded(w, like):  # the closed form as the dtype holds it (RMS norm's penalty underflows float16 at 1e3)
        return w.detach().to(like.dtype).double().numpy()

    errors = {"dx": support.relative_error(got_dx, rounded(want_dx, got_dx))}
    errors.update({name: support.relative_error(g, rounded(w, g))
                   for name, g, w in zip(["x", "gamma", "beta"], got, want) if w is not None})
    assert all(e <= tol for e in errors.values()), f"relative errors {errors} above {tol}"
    return got


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_penalty_matches_the_closed_form(case, variant):
    _compare(case, variant)


@pytest.mark.parametrize("case", ["group", "instance-odd"])
def test_gradient_penalty_after_a_chunked_forward(case, monkeypatch):
    """The chunked block strategy's forward, then the plain-ops backward."""
    monkeypatch.setattr(channels_last, "LANES", 16)
    monkeypatch.setattr(channels_last, "TILE", 16)
    monkeypatch.setattr(channels_last, "TILES_PER_CHUNK", 1)
    _compare(case, "f32-1e4")


@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("case", ["group", "layer", "rms"])
def test_gradient_penalty_without_gamma_or_beta(case, affine):
    _compare(case, "f32-1e4", affine=affine)


def test_beta_gets_no_second_order_gradient():
    """``dx`` does not depend on ``beta``: autograd says so (None), not a zero tensor by accident."""
    grads = _compare("layer", "f32")
    assert grads[2] is None


def test_first_order_gradients_do_not_record_a_graph():
    """Without ``create_graph`` the kernels' own backward runs: its gradients carry no graph."""
    x, dy = support.inputs((2, 3, 4, 8), torch.float32, offset=1e4)
    x = x.to(DEVICE).requires_grad_(True)
    gamma, beta = support.params((8,), DEVICE)
    with nt.interpret_on_cpu():
        y = nt.group_norm(x, groups=2, axis=3, gamma=gamma, beta=beta, epsilon=EPSILON)
        z = row_norm.layer_norm(x, axes=[3], gamma=gamma, beta=beta, epsilon=EPSILON)
    grads = torch.autograd.grad((y * dy.to(DEVICE)).sum() + z.sum(), [x, gamma, beta])
    assert all(g.grad_fn is None and not g.requires_grad for g in grads)


@pytest.mark.parametrize("case", ["group", "instance-odd", "layer", "rms"])
def test_a_batch_of_cotangents_matches_one_backward_each(case):
    """``torch.autograd.grad(is_grads_batched=True)`` (``jacobian``/``hessian`` with
    ``vectorize=True``) hands the backward one batched cotangent, which has no
    memory of its own for a kernel: the plain-ops backward takes it."""
    hook, shape, kwargs = CASES[case]
    x, dy = support.inputs(shape, torch.float32, offset=1e4)
    x = x.to(DEVICE).requires_grad_(True)
    gamma, beta = support.params(shape[-1:] if hook is nt.group_norm else tuple(shape[a] for a in kwargs["axes"]),
                                 DEVICE)
    with nt.interpret_on_cpu():
        y = hook(x, gamma=gamma, beta=beta, epsilon=EPSILON, **kwargs)
        assert y is not None, "the kernels declined"
        cotangents = torch.stack([dy, -2.0 * dy, dy.flip(0)]).to(DEVICE)
        got = torch.autograd.grad(y, [x, gamma, beta], cotangents, is_grads_batched=True, retain_graph=True)
        for i, cotangent in enumerate(cotangents):
            want = torch.autograd.grad(y, [x, gamma, beta], cotangent, retain_graph=True)
            for got_part, want_part in zip(got, want):
                assert support.relative_error(got_part[i], want_part.detach().double().cpu().numpy()) <= 1e-4
