"""What the torch fast paths' autograd functions save for their backward
(:mod:`normlab.backends.torch_saved_tensors`):

* a saved-tensor hook (``torch.autograd.graph.saved_tensors_hooks``) may give
  the values back in another layout: the kernels read them in the layout
  the forward saw. Before, every served op's gradients came out whole units
  off (relative error 1-2.8), and float64 layer norm raised;
* an input made under ``torch.inference_mode()`` can be normalized with
  parameters that take gradients, as on the general path (before: "Inference
  tensors cannot be saved for backward").

The Triton functions (the same saving) run in Triton's interpreter in
``test_triton_double_backward.py``'s module setup: see the last test here.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops
from tests.backends.test_fast_paths import CASES, DECLINED, EPSILON
from tests.backends.test_fast_paths import _apply as _apply_case
from tests.backends.test_fast_paths import _inputs as _case_inputs

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's autograd functions"),
    pytest.mark.usefixtures("keras_on_cpu"),
]

#: Batch norm with given statistics (the moving averages): shape, channel axis.
INFERENCE = {"bn-infer-nchw": ((4, 6, 5, 3), 1), "bn-infer-nhwc": ((4, 5, 3, 8), 3)}
SERVED = sorted(set(CASES) - DECLINED) + sorted(INFERENCE)


def _data(case, dtype):
    import torch

    if case in INFERENCE:
        shape, axis = INFERENCE[case]
        rng = np.random.default_rng(1)
        arrays = [rng.normal(3.0, 2.0, shape), rng.normal(size=shape), rng.uniform(0.5, 1.5, shape[axis]),
                  rng.normal(size=shape[axis])]
    else:
        arrays = _case_inputs(case, 3.0)
    return [torch.tensor(a, dtype=getattr(torch, dtype)) for a in arrays]


def _apply(case, x, gamma, beta):
    if case not in INFERENCE:
        return _apply_case(case, x, gamma, beta)
    axis = INFERENCE[case][1]
    c = x.shape[axis]
    mean = 3.0 + 0.1 * np.arange(c)
    variance = 4.0 + 0.2 * np.arange(c)
    stats = [keras.ops.convert_to_tensor(v, dtype=x.dtype) for v in (mean, variance)]
    return nops.batch_norm(x, *stats, axis=axis, gamma=gamma, beta=beta, epsilon=EPSILON, training=False), None


def _transposed(t):
    """The same values, laid out with the last two axes swapped."""
    return t.mT.contiguous().mT if t.dim() >= 2 else t


def _grads(case, x, dy, gamma, beta, hooks=contextlib.nullcontext):
    import torch

    xs, g, b = (t.clone().requires_grad_(True) for t in (x, gamma, beta))
    with hooks():
        y = _apply(case, xs, g, b)[0]
    return [t.float().numpy() for t in torch.autograd.grad((y * dy).sum(), [xs, g, b])]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("case", SERVED)
def test_a_saved_tensor_hook_may_unpack_another_layout(case, dtype):
    import torch

    data = _data(case, dtype)

    def hooks():
        return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), _transposed)

    for got, want in zip(_grads(case, *data, hooks=hooks), _grads(case, *data)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", SERVED)
def test_offloading_to_the_cpu_keeps_the_gradients(case):
    import torch

    data = _data(case, "float32")
    for got, want in zip(_grads(case, *data, hooks=torch.autograd.graph.save_on_cpu), _grads(case, *data)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", SERVED)
def test_an_inference_tensor_input_with_trained_parameters(case):
    import torch

    x, dy, gamma, beta = _data(case, "float32")
    with torch.inference_mode():
        x_inference = x.clone()

    def parameter_grads(data):
        g, b = gamma.clone().requires_grad_(True), beta.clone().requires_grad_(True)
        y = _apply(case, data, g, b)[0]
        return torch.autograd.grad((y * dy).sum(), [g, b])

    got = parameter_grads(x_inference)
    with backends.disabled():
        want = parameter_grads(x)
    for got_part, want_part in zip(got, want):
        np.testing.assert_allclose(got_part.numpy(), want_part.numpy(), rtol=1e-5, atol=1e-5)
