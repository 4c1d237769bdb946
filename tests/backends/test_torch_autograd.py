"""The torch fast paths' own autograd functions
(:mod:`normlab.backends.torch_autograd`): the centered copy in a reused
buffer, recentered in the backward; parameter-only gradients; double
backward; the closed-form backward of few-channel batch norm. These run
where normlab's compiled CPU kernels do not (float16, bfloat16, float64,
or no C compiler): turned off here, so that
float32 exercises them too (the compiled kernels: ``test_cpu_kernels.py``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from normlab import ops as nops
from tests.backends._closed_form import normalize_and_vjp
from tests.backends.test_fast_paths import CASES, DECLINED, EPSILON, _apply, _check, _inputs

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's autograd functions"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]

SERVED = sorted(set(CASES) - DECLINED)


@pytest.fixture(autouse=True)
def aten_kernels(monkeypatch):
    """ATen's kernels on centered data, as without a C compiler."""
    monkeypatch.setenv("NORMLAB_CPU_KERNELS", "0")


@pytest.fixture
def scratch_always(monkeypatch):
    """Every centered copy in the thread's buffer (normally from 1 MiB)."""
    from normlab.backends import torch_scratch

    monkeypatch.setattr(torch_scratch, "SCRATCH_BYTES", (0, 512 << 20))


@pytest.mark.parametrize("case", SERVED)
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_parity_with_the_reused_buffer(scratch_always, case, offset):
    _check(case, "float32", offset)


@pytest.mark.parametrize("case", ["gn-nhwc", "gn-nchw", "in-nhwc-large", "ln-last", "bn-nhwc", "bn-nchw"])
def test_interleaved_calls_do_not_share_results(scratch_always, case):
    """Two forwards, then both backwards: the buffer is reused by the second
    forward, so the first backward must center its input again, and no
    output may alias the buffer."""
    import torch

    x1_np, dy_np, gamma_np, beta_np = _inputs(case, 100.0, seed=1)
    x2_np = _inputs(case, -3.0, seed=2)[0]
    expected = [normalize_and_vjp(x.astype("float32"), dy_np.astype("float32"), CASES[case][0], CASES[case][2],
                                  groups=CASES[case][3], gamma=gamma_np, beta=beta_np, epsilon=EPSILON)
                for x in (x1_np, x2_np)]
    xs = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in (x1_np, x2_np)]
    ys = [_apply(case, x, torch.tensor(gamma_np), torch.tensor(beta_np))[0] for x in xs]
    for y, x, ref in zip(ys, xs, expected):
        y.backward(torch.tensor(dy_np, dtype=torch.float32))
        np.testing.assert_allclose(y.detach().numpy(), ref["y"], atol=2e-5)
        np.testing.assert_allclose(x.grad.numpy(), ref["dx"], atol=5e-5)


@pytest.mark.parametrize("case", SERVED)
def test_double_backward_matches_the_general_path(scratch_always, case):
    """A gradient penalty (the gradient of ``|d(y . w)/dx|^2``, as in WGAN-GP)
    through the fast path's backward, against the general path, in float64."""
    import torch

    x_np, dy_np, gamma_np, beta_np = _inputs(case, 3.0)

    def penalty_grads():
        x = torch.tensor(x_np, requires_grad=True)
        gamma = torch.tensor(gamma_np, dtype=torch.float64, requires_grad=True)
        beta = torch.tensor(beta_np, dtype=torch.float64, requires_grad=True)
        y, _ = _apply(case, x, gamma, beta)
        (dx,) = torch.autograd.grad((y * torch.tensor(dy_np)).sum(), x, create_graph=True)
        return [g.numpy() for g in torch.autograd.grad((dx * dx).sum(), [x, gamma])]

    _matches_the_general_path(penalty_grads, rtol=1e-7, atol=1e-9)


def _matches_the_general_path(results, **tolerance):
    """``results()`` (a list of arrays) with the fast paths on, against the same with them off."""
    fast = results()
    with backends.disabled():
        general = results()
    for got, ref in zip(fast, general):
        np.testing.assert_allclose(got, ref, **tolerance)


def test_parameter_gradients_without_input_gradient():
    """Gradients for gamma and beta only (the input is data, as in the first
    layer of a model): ATen's channels-last group norm backward crashes on
    this unless the hook works around it."""
    import torch

    for case in ("gn-nhwc", "in-nhwc", "bn-nhwc", "ln-last", "gn-nchw"):
        op, shape, axis, groups = CASES[case]
        x_np, dy_np, gamma_np, beta_np = _inputs(case, 0.0)
        expected = normalize_and_vjp(x_np.astype("float32"), dy_np.astype("float32"), op, axis,
                                     groups=groups, gamma=gamma_np, beta=beta_np, epsilon=EPSILON)
        x = torch.tensor(x_np, dtype=torch.float32)
        gamma = torch.tensor(gamma_np, requires_grad=True)
        beta = torch.tensor(beta_np, requires_grad=True)
        y, _ = _apply(case, x, gamma, beta)
        dgamma, dbeta = torch.autograd.grad(y, [gamma, beta], torch.tensor(dy_np, dtype=torch.float32))
        np.testing.assert_allclose(dgamma.numpy(), expected["dgamma"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dbeta.numpy(), expected["dbeta"], rtol=1e-4, atol=1e-4)


def test_large_inputs_reuse_one_buffer():
    """From 1 MiB the centered copy goes to the thread's buffer: two calls
    on a 2 MiB input leave one buffer of that size, and the results are
    fresh tensors."""
    import torch

    from normlab.backends import torch_scratch

    x = torch.randn(4, 16, 16, 512) + 50.0
    first = nops.group_norm(x, 32, 3)
    second = nops.group_norm(x + 7.0, 32, 3)  # the same up to rounding
    buffers = torch_scratch._scratch.__dict__.get("buffers", {})
    assert buffers[torch.float32].numel() >= x.numel()
    assert first.data_ptr() != second.data_ptr()
    assert not any(first.data_ptr() == b.data_ptr() for b in buffers.values())
    np.testing.assert_allclose(first.numpy(), second.numpy(), atol=1e-4)
    torch_scratch.release_buffers()
    assert "buffers" not in torch_scratch._scratch.__dict__
    np.testing.assert_allclose(nops.group_norm(x, 32, 3).numpy(), first.numpy(), atol=0)


@pytest.mark.parametrize("affine", [True, False])
def test_few_channel_batch_norm_gradients_are_exact(affine):
    """The closed-form backward of channels-last batch norm with few channels,
    including cotangents of the returned batch mean and variance, against
    finite differences in float64."""
    import torch

    from normlab.backends.torch_autograd import ChannelsLastBatchNorm

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(0.5, 2.0, (3, 4, 5, 6)), requires_grad=True)
    params = [torch.tensor(rng.uniform(0.5, 1.5, 6), requires_grad=True),
              torch.tensor(rng.normal(size=6), requires_grad=True)] if affine else [None, None]

    def outputs(x, *weights):
        gamma, beta = weights if affine else (None, None)
        return ChannelsLastBatchNorm.apply(x, gamma, beta, EPSILON)

    inputs = (x, *params) if affine else (x,)
    assert torch.autograd.gradcheck(outputs, inputs)
    assert torch.autograd.gradcheck(lambda *a: outputs(*a)[1:], inputs)  # statistics alone


@pytest.mark.parametrize("case", SERVED)
def test_the_output_can_be_modified_in_place(case):
    """``F.relu(y, inplace=True)`` after the norm, as torchvision's blocks do:
    a kernel's squeeze or permute inside the Function's forward made the
    output a view that autograd refused to let change ("a view ... created
    inside a custom Function")."""
    import torch

    x_np, dy_np, gamma_np, beta_np = _inputs(case, 3.0)

    def grads():
        x = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
        gamma = torch.tensor(gamma_np, requires_grad=True)
        y, _ = _apply(case, x, gamma, torch.tensor(beta_np))
        torch.nn.functional.relu(y, inplace=True).backward(torch.tensor(dy_np, dtype=torch.float32))
        return x.grad.numpy(), gamma.grad.numpy()

    _matches_the_general_path(grads, rtol=1e-4, atol=1e-4)


def test_returned_batch_statistics_can_be_modified_in_place():
    """The variance was the tensor the kernel's Function saved for gamma's
    gradient: changing it in place failed the backward (a version-counter error)."""
    import torch

    x = torch.randn(4, 8, 5, generator=torch.Generator().manual_seed(0)) + 1.0
    gamma = torch.ones(8, requires_grad=True)
    y, mean, variance = nops.batch_norm(x, axis=1, gamma=gamma, training=True, return_stats=True)
    variance.add_(1.0)
    mean.add_(1.0)
    (dgamma,) = torch.autograd.grad((y * y).sum(), gamma)
    np.testing.assert_allclose(dgamma.numpy(), 2.0 * 20 * np.ones(8), rtol=1e-2)  # sum of xhat^2 over 20 values


def test_a_buffer_made_in_inference_mode_serves_later_calls():
    """The first large call in ``torch.inference_mode()`` (validation before
    training, as in PyTorch Lightning) made the thread's buffer an inference
    tensor, and every later call outside it failed to write it."""
    import torch

    from normlab.backends import torch_scratch

    torch_scratch.release_buffers()
    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0)) + 5.0  # 1 MiB: the buffer
    with torch.inference_mode():
        served = nops.layer_norm(x, -1)
    y = nops.layer_norm(x.requires_grad_(True), -1)
    (y * y).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), served.numpy(), atol=1e-6)
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()


def test_the_buffer_is_made_on_the_input_device_whatever_the_default():
    """Under ``torch.set_default_device("cuda")`` (the meta device stands in
    here) a CPU input's buffer was made on the default device."""
    import torch

    from normlab.backends import torch_scratch

    torch_scratch.release_buffers()
    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0), device="cpu")
    expected = nops.layer_norm(x, -1)
    torch_scratch.release_buffers()
    with torch.device("meta"):
        got = nops.layer_norm(x, -1)
    assert got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
