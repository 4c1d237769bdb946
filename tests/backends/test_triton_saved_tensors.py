"""The Triton functions under a saved-tensor hook that unpacks another
layout (``torch.autograd.graph.saved_tensors_hooks``): their kernels read
the tensors in the layout the forward saved (relative error 1.4-2.3
before). Marked ``triton``; runs in Triton's interpreter on a machine
without CUDA, compiled on a GPU (see test_triton.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the Triton kernels take torch tensors")

from tests.backends import _triton_support as support  # noqa: E402

CUDA, MODE, WHY, DEVICE = support.prepare()  # before triton is first imported (TRITON_INTERPRET)

from normlab.backends import triton as nt  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.once, pytest.mark.skipif(MODE is None, reason=WHY)]

#: name: (hook, shape, hook arguments, parameter shape)
CASES = {
    "group": (nt.group_norm, (2, 5, 6, 8), dict(groups=4, axis=3), (8,)),
    "instance-odd": (nt.group_norm, (2, 7, 5), dict(groups=5, axis=2), (5,)),
    "layer": (nt.layer_norm, (6, 12), dict(axes=[1]), (12,)),
    "rms": (nt.rms_norm, (6, 12), dict(axes=[1]), (12,)),
}


def _transposed(t):
    return t.mT.contiguous().mT if t.dim() >= 2 else t


def _grads(case, hooked):
    hook, shape, kwargs, pshape = CASES[case]
    x, dy = support.inputs(shape, torch.float32, offset=3.0)
    x, dy = x.to(DEVICE).requires_grad_(True), dy.to(DEVICE)
    gamma, beta = support.params(pshape, DEVICE)
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), _transposed if hooked else (lambda t: t))
    with hooks, nt.interpret_on_cpu():
        y = hook(x, gamma=gamma, beta=beta, epsilon=1e-3, **kwargs)
    assert y is not None, "the kernels declined"
    return torch.autograd.grad((y * dy).sum(), [x, gamma, beta])


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_saved_tensor_hook_may_unpack_another_layout(case):
    for got, want in zip(_grads(case, True), _grads(case, False)):
        assert torch.equal(got, want)
