"""Batch norm with given statistics (inference) on normlab's compiled CPU
kernels (``affine.c``, :class:`normlab.backends.torch_cpu.AffineNorm`):
parity with the float64 closed form and the general path, at large
offsets, in half precision, on every layout the torch hook serves, every
gradient subset, double backward, results independent of the thread
count, and what the hook declines."""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import pytest

import normlab
from normlab import backends
from normlab import ops as nops
from tests.backends._kernel_calls import graph_nodes

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch hook calls the kernels"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]

EPSILON = 1e-3

# id: (shape, channel axis). Channels-last data runs as rows of C values,
# channels-first as planes of positions; odd sizes, and more units than
# tasks (64) in some.
LAYOUTS = {
    "nhwc": ((3, 5, 7, 12), 3),
    "nhwc-c3": ((2, 37, 41, 3), 3),
    "nchw": ((3, 12, 5, 7), 1),
    "ncl-long": ((2, 3, 5000), 1),
    "nc": ((70, 24), 1),
    "nc-one-sample": ((1, 33), 1),
    "ncdhw": ((2, 4, 3, 5, 6), 1),
    "ndhwc": ((2, 3, 5, 6, 4), 4),
    "many-planes": ((65, 3, 9), 1),
}

TOLERANCE = {"float32": 2e-5, "bfloat16": 8e-3, "float16": 1e-3}


def _torch():
    import torch

    return torch


def _data(layout, offset, dtype="float32", seed=0):
    """x = offset + N(0.5, 2); the moving mean within 1 of the offset, the
    moving variance in [0.5, 4]; cotangent and parameters of unit scale."""
    torch = _torch()
    shape, axis = LAYOUTS[layout]
    c = shape[axis]
    rng = np.random.default_rng(seed)
    x = offset + rng.normal(0.5, 2.0, size=shape)
    stats = (offset + rng.uniform(-1.0, 1.0, size=c), rng.uniform(0.5, 4.0, size=c))
    dy = rng.normal(size=shape)
    params = (rng.uniform(0.5, 1.5, size=c), rng.normal(size=c))
    as_t = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    xt = torch.tensor(x, dtype=torch.float32).to(as_t)
    return xt, *(torch.tensor(a, dtype=torch.float32) for a in (*stats, *params)), torch.tensor(dy).to(as_t)


def _expected(x, mean, variance, gamma, beta, dy, axis):
    """Float64 y, dx, dgamma, dbeta from the formula, on the inputs as stored."""
    x, mean, variance, dy = (t.double().numpy() for t in (x, mean, variance, dy))
    shape = [1] * x.ndim
    shape[axis] = -1
    rstd = 1.0 / np.sqrt(variance + EPSILON)
    g = np.ones_like(mean) if gamma is None else gamma.double().numpy()
    b = np.zeros_like(mean) if beta is None else beta.double().numpy()
    xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
    others = tuple(i for i in range(x.ndim) if i != axis)
    return {"y": xhat * g.reshape(shape) + b.reshape(shape), "dx": dy * (rstd * g).reshape(shape),
            "dgamma": (dy * xhat).sum(others), "dbeta": dy.sum(others)}


@pytest.fixture(autouse=True)
def kernel_calls(monkeypatch):
    """The shapes of the calls of :func:`normlab.backends.torch_cpu.affine` (the kernels)."""
    from normlab.backends import torch_cpu

    calls, original = [], torch_cpu.affine

    def recording(x3, *args):
        calls.append(tuple(x3.shape))
        return original(x3, *args)

    monkeypatch.setattr(torch_cpu, "affine", recording)
    return calls


def _run(x, mean, variance, gamma, beta, dy, axis, wanted=("x", "gamma", "beta")):
    """y and the wanted gradients as float64 NumPy."""
    torch = _torch()
    leaves = {"x": x.detach().requires_grad_("x" in wanted)}
    for name, p in (("gamma", gamma), ("beta", beta)):
        leaves[name] = None if p is None else p.detach().requires_grad_(name in wanted)
    y = nops.batch_norm(leaves["x"], mean, variance, axis=axis, gamma=leaves["gamma"], beta=leaves["beta"],
                        epsilon=EPSILON)
    sources = [leaves[n] for n in ("x", "gamma", "beta") if n in wanted and leaves[n] is not None]
    grads = torch.autograd.grad(y, sources, dy) if sources else ()
    out = {"y": y.detach().double().numpy()}
    names = [n for n in ("x", "gamma", "beta") if n in wanted and leaves[n] is not None]
    for name, grad in zip(names, grads):
        out["d" + name] = grad.double().numpy()
    return out, y.dtype


def _check(calls, layout, offset=0.0, dtype="float32", affine=True, wanted=("x", "gamma", "beta")):
    x, mean, variance, gamma, beta, dy = _data(layout, offset, dtype)
    shape, axis = LAYOUTS[layout]
    if not affine:
        gamma = beta = None
    fast, out_dtype = _run(x, mean, variance, gamma, beta, dy, axis, wanted)
    c = shape[axis]
    units = (x.numel() // c, c, 1) if axis == len(shape) - 1 else (shape[0], c, x.numel() // (shape[0] * c))
    assert calls == [units], f"{layout}: the kernels ran on {calls}, expected {units}"
    assert out_dtype == x.dtype
    with backends.disabled():
        general, _ = _run(x, mean, variance, gamma, beta, dy, axis, wanted)
    expected = _expected(x, mean, variance, gamma, beta, dy, axis)
    tol = TOLERANCE[dtype]
    for key, got in fast.items():
        ref = expected[key]
        # dgamma and dbeta are float32 sums whatever x is; x itself is rounded to its dtype.
        scale = max(1.0, float(np.abs(ref).max())) * (1.0 if key in ("y", "dx") else 1e-4 / tol + 1.0)
        err = float(np.abs(got - ref).max())
        own = float(np.abs(general[key] - ref).max())
        assert err <= tol * scale, f"{layout} {dtype} offset={offset:g}: {key} off by {err:.3g}"
        assert err <= own + 2 * tol * scale, f"{layout}: {key} {err:.3g} vs the general path's {own:.3g}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_parity_at_offsets(kernel_calls, layout, offset):
    _check(kernel_calls, layout, offset)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nc", "ncl-long"])
@pytest.mark.parametrize("dtype, offset", [("bfloat16", 0.0), ("bfloat16", 1e4), ("float16", 0.0),
                                           ("float16", 500.0)])
def test_half_precision(kernel_calls, layout, dtype, offset):
    _check(kernel_calls, layout, offset, dtype)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_without_gamma_and_beta(kernel_calls, layout):
    _check(kernel_calls, layout, 1e4, affine=False)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nc"])
@pytest.mark.parametrize("wanted", [("x",), ("gamma", "beta"), ("gamma",), ("beta",), ()])
def test_gradient_subsets(kernel_calls, layout, wanted):
    _check(kernel_calls, layout, 1e4, wanted=wanted)


def test_exact_where_folding_the_statistics_is_not():
    """At an offset of 1e4 ATen's eval-mode kernel (x * a + b) is 1e-3 off;
    the kernels form x - mean first."""
    torch = _torch()
    x, mean, variance, gamma, beta, dy = _data("nhwc", 1e4)
    ref = _expected(x, mean, variance, gamma, beta, dy, 3)["y"]
    y = nops.batch_norm(x, mean, variance, axis=3, gamma=gamma, beta=beta, epsilon=EPSILON)
    aten = torch.nn.functional.batch_norm(x.permute(0, 3, 1, 2), mean, variance, gamma, beta, False, 0.0, EPSILON)
    assert np.abs(y.double().numpy() - ref).max() < 2e-5
    assert np.abs(aten.permute(0, 2, 3, 1).double().numpy() - ref).max() > 1e-4  # what the kernels avoid


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_double_backward_matches_the_general_path(layout, dtype, tol):
    """A gradient penalty through a frozen batch norm: the second derivative
    by the composite, as the general path's."""
    torch = _torch()
    x, mean, variance, gamma, beta, dy = _data(layout, 3.0, dtype)
    axis = LAYOUTS[layout][1]

    def penalty():
        xx, gg = x.detach().requires_grad_(True), gamma.detach().requires_grad_(True)
        y = nops.batch_norm(xx, mean, variance, axis=axis, gamma=gg, beta=beta, epsilon=EPSILON)
        (gx,) = torch.autograd.grad((y.float() * dy.float()).sum(), [xx], create_graph=True)
        return torch.autograd.grad((gx.float() ** 2).sum(), [gg])[0]

    fast = penalty()
    with backends.disabled():
        general = penalty()
    np.testing.assert_allclose(fast.numpy(), general.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["nhwc-c3", "ncl-long", "many-planes"])
def test_results_do_not_depend_on_the_thread_count(layout):
    torch = _torch()
    x, mean, variance, gamma, beta, dy = _data(layout, 1e4)
    axis = LAYOUTS[layout][1]
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, _ = _run(x, mean, variance, gamma, beta, dy, axis)
            runs.append(out)
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for key in runs[0]:
            np.testing.assert_array_equal(other[key], runs[0][key], err_msg=key)


def test_declines_what_it_does_not_serve():
    """A channel axis in the middle, float64, non-contiguous data and
    statistics that need a gradient go to the general path."""
    torch = _torch()
    from normlab.backends import torch as hooks

    x, mean, variance, gamma, beta, _ = _data("nchw", 0.0)
    kw = dict(mean=mean, variance=variance, gamma=gamma, beta=beta, epsilon=EPSILON)
    assert hooks.batch_norm_infer(x, axis=1, **kw) is not None
    assert hooks.batch_norm_infer(x.permute(0, 2, 1, 3).contiguous(), axis=2, **kw) is None
    assert hooks.batch_norm_infer(x.double(), axis=1, **kw) is None
    assert hooks.batch_norm_infer(x.transpose(2, 3), axis=1, **kw) is None
    tracked = dict(kw, mean=mean.clone().requires_grad_(True))
    assert hooks.batch_norm_infer(x, axis=1, **tracked) is None
    with torch.no_grad():  # no gradient will be taken: served
        assert hooks.batch_norm_infer(x, axis=1, **tracked) is not None
    # The general path then differentiates the statistics.
    mean_leaf = mean.clone().requires_grad_(True)
    y = nops.batch_norm(x, mean_leaf, variance, axis=1, epsilon=EPSILON)
    (dmean,) = torch.autograd.grad(y.sum(), [mean_leaf])
    expected = -x[0].numel() / x.shape[1] * x.shape[0] / np.sqrt(variance.double().numpy() + EPSILON)
    np.testing.assert_allclose(dmean.double().numpy(), expected, rtol=1e-5)


def test_the_layer_in_inference_and_frozen_fine_tuning():
    """BatchNormalization after training: predict-mode outputs, and the
    gradients through a frozen layer (trainable=False runs in inference),
    agree with the general path; the moving statistics are untouched."""
    torch = _torch()
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(3.0, 2.0, size=(4, 5, 5, 8)), dtype=torch.float32)
    layer = normlab.BatchNormalization(momentum=0.5, gamma_initializer="random_uniform")
    for _ in range(3):
        layer(x, training=True)
    moving = [w.numpy().copy() for w in (layer.moving_mean, layer.moving_variance)]
    y = layer(x, training=False)
    with backends.disabled():
        y_general = layer(x, training=False)
    np.testing.assert_allclose(y.detach().numpy(), y_general.detach().numpy(), atol=2e-5)
    layer.trainable = False
    xx = x.clone().requires_grad_(True)
    out = layer(xx, training=True)  # frozen: inference mode, as in Keras
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "AffineNormBackward"  # the kernels
    (dx,) = torch.autograd.grad((out * out).sum(), [xx])
    with backends.disabled():
        xg = x.clone().requires_grad_(True)
        (dx_general,) = torch.autograd.grad((layer(xg, training=True) ** 2).sum(), [xg])
    np.testing.assert_allclose(dx.numpy(), dx_general.numpy(), rtol=1e-5, atol=1e-5)
    for before, after in zip(moving, (layer.moving_mean, layer.moving_variance)):
        np.testing.assert_array_equal(before, after.numpy())


@pytest.mark.parametrize("kwargs", [{}, {"axis": 1}, {"renorm": True}, {"virtual_batch_size": 2}])
def test_a_training_call_before_the_backward_of_an_inference_call(kwargs):
    """The kernels saved the layer's moving statistics themselves for the backward: a
    training call in between (which updates them in place) made that backward fail
    ("modified by an inplace operation"). The gradient is the one taken before it."""
    torch = _torch()
    rng = np.random.default_rng(2)
    x1, x2 = (torch.tensor(rng.normal(size=(4, 3, 2, 2)), dtype=torch.float32) for _ in range(2))
    layer = normlab.BatchNormalization(momentum=0.5, **kwargs)
    layer(x2, training=True)

    def gradients(y):
        return [g.numpy() for g in torch.autograd.grad(y.sum(), [layer.gamma.value, layer.beta.value])]

    first = layer(x1, training=False)
    expected = gradients(first)
    y = layer(x1, training=False)
    assert "AffineNormBackward" in graph_nodes(y)  # the kernels
    layer(x2 + 1.0, training=True)
    for got, want in zip(gradients(y), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_where_autograd_records_nothing_the_same_values(kernel_calls, layout):
    """Under ``no_grad``, or with no input that requires a gradient, the
    kernel runs without :class:`~normlab.backends.torch_cpu.AffineNorm`:
    the same output bit for bit, and no graph."""
    torch = _torch()
    x, mean, variance, gamma, beta, _ = _data(layout, 1e4)
    _, axis = LAYOUTS[layout]

    def run(requires_grad):
        params = [p.detach().requires_grad_(requires_grad) for p in (gamma, beta)]
        return nops.batch_norm(x.detach().requires_grad_(requires_grad), mean, variance, axis=axis,
                               gamma=params[0], beta=params[1], epsilon=EPSILON)

    recorded = run(True)
    assert "AffineNormBackward" in graph_nodes(recorded)
    with torch.no_grad():
        quiet = run(True)
    plain = run(False)
    for y in (quiet, plain):
        assert y.grad_fn is None
        np.testing.assert_array_equal(y.numpy(), recorded.detach().numpy())
    assert len(kernel_calls) == 3
