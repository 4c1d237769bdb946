"""The Triton kernels (normlab/backends/triton) against float64 closed forms.

Marked ``triton``: outputs and the gradients of ``x``, ``gamma`` and
``beta`` at offsets of 1e4 and 1e6, with an outlier as the shift, in half
precision, with odd channel counts, groups of 1 and C, both block
strategies of the channels-last kernels, on small shapes. On a machine
without CUDA they run in Triton's interpreter on CPU tensors (this module
sets ``TRITON_INTERPRET=1`` before triton is imported); on a CUDA machine
the same tests run the compiled kernels on the GPU (``TRITON_INTERPRET=1``
in the environment runs the interpreter there too). Tests marked ``gpu``
(larger shapes, no host sync) need the compiled kernels and skip
elsewhere. Without Triton, or in a process that loaded TensorFlow first,
everything here skips with the reason.

    KERAS_BACKEND=torch python -m pytest tests/backends/test_triton.py           # CPU: interpreter, ~1 min
    KERAS_BACKEND=torch python -m pytest tests/backends/test_triton.py -m gpu    # GPU only
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the Triton kernels take torch tensors")

from tests.backends import _triton_support as support  # noqa: E402

CUDA, MODE, WHY, DEVICE = support.prepare()  # before triton is first imported (TRITON_INTERPRET)

from normlab.backends import triton as nt  # noqa: E402
from normlab.backends.triton import channels_last, row_norm, runtime  # noqa: E402
from normlab.testing import reference  # noqa: E402
from tests.backends._closed_form import normalize_and_vjp  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.once, pytest.mark.skipif(MODE is None, reason=WHY)]
requires_gpu = pytest.mark.skipif(MODE != "compiled", reason="needs a CUDA GPU (compiled kernels)")
EPSILON = 1e-3
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture
def narrow_blocks(monkeypatch):
    """Channel blocks of 16 lanes: several blocks, and a last one with lanes
    beyond C, on tiny shapes (and a cheaper interpreter)."""
    monkeypatch.setattr(channels_last, "LANES", 16)


@pytest.fixture
def small_tiles(monkeypatch, narrow_blocks):
    """Chunked plans with several tiles per chunk and several chunks on tiny shapes."""
    monkeypatch.setattr(channels_last, "TILE", 32)
    monkeypatch.setattr(channels_last, "TILES_PER_CHUNK", 2)
    monkeypatch.setattr(row_norm, "TILE", 16)


# (dtype, offset, spread): float32 far beyond its spread; half precision as
# far as its 11 (8) significant bits leave the data distinct.
VARIANTS = {
    "f32": ("float32", 0.0, 1.0),
    "f32-1e4": ("float32", 1e4, 1.0),
    "f32-1e6": ("float32", 1e6, 1.0),
    "f16-1e3": ("float16", 1e3, 8.0),
    "bf16-1e2": ("bfloat16", 1e2, 8.0),
}


def _run(hook, x, dy, gamma, beta, **kwargs):
    """The hook's output and the gradients of x, gamma and beta (interpreted)."""
    xg = x.to(DEVICE, copy=True).requires_grad_(True)
    with nt.interpret_on_cpu():
        y = hook(xg, gamma=gamma, beta=beta, epsilon=EPSILON, **kwargs)
    assert y is not None, "the kernels declined"
    assert y.dtype == x.dtype and y.shape == x.shape
    named = [(name, t) for name, t in (("dx", xg), ("dgamma", gamma), ("dbeta", beta)) if t is not None]
    grads = torch.autograd.grad(y, [t for _, t in named], dy.to(DEVICE))
    return y, {name: g for (name, _), g in zip(named, grads)}


def _check(dtype, y, grads, want_y, want):
    tol = support.TOLERANCE[dtype]
    errors = {"y": support.relative_error(y, want_y)}
    errors.update({k: support.relative_error(g, want[k]) for k, g in grads.items()})
    assert all(e <= tol for e in errors.values()), f"relative errors {errors} above {tol}"


# --------------------------------------------------------------------------
# Channels-last group and instance norm.

GROUP_CASES = {
    "gn": ((2, 5, 6, 8), 4),
    "gn-one-group": ((2, 5, 6, 8), 1),
    "in": ((2, 5, 6, 8), 8),
    "in-odd-channels": ((2, 7, 5), 5),
    "gn-odd-group": ((2, 3, 4, 15), 5),
    "gn-rank5": ((2, 3, 4, 2, 6), 3),
    "gn-rank2": ((4, 6), 3),
    "gn-partial-block": ((2, 3, 3, 40), 5),  # 16 lanes: blocks of 2 groups, the last of 1
}


def _group(case, variant, *, resident, outlier=False, affine=(True, True)):
    shape, groups = GROUP_CASES[case]
    dtype, offset, spread = VARIANTS[variant]
    at = (slice(None),) + (0,) * (len(shape) - 2) if outlier else None  # every group's shift
    x, dy = support.inputs(shape, DTYPES[dtype], offset=offset, spread=spread, outlier_at=at)
    gamma, beta = support.params((shape[-1],), DEVICE)
    gamma, beta = (gamma if affine[0] else None), (beta if affine[1] else None)
    y, grads = _run(nt.group_norm, x, dy, gamma, beta, groups=groups, axis=len(shape) - 1, resident=resident)
    g, b = (None if t is None else t.detach().cpu().numpy() for t in (gamma, beta))
    x64 = x.double().numpy()
    want_y = reference.group_norm(x64, groups, -1, g, b, EPSILON)
    want = normalize_and_vjp(x64, dy.double().numpy(), "group", len(shape) - 1, groups=groups, gamma=g, beta=b,
                             epsilon=EPSILON)
    _check(dtype, y, grads, want_y, want)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(GROUP_CASES))
def test_group_norm_resident(case, variant, narrow_blocks):
    assert channels_last.plan(*_slab(case), 4).chunk is None  # tiny slabs are resident
    _group(case, variant, resident=None)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(GROUP_CASES))
def test_group_norm_chunked(case, variant, small_tiles):
    _group(case, variant, resident=False)


def _slab(case):
    """``(S, C, groups)`` of a case."""
    shape, groups = GROUP_CASES[case]
    return math.prod(shape[1:-1]), shape[-1], groups


@pytest.mark.parametrize("resident", [None, False])
@pytest.mark.parametrize("case", ["gn", "in", "gn-partial-block"])
def test_group_norm_default_blocks(case, resident):
    """The blocks of 64 lanes the plan uses on a GPU."""
    _group(case, "f32-1e4", resident=resident)


@pytest.mark.parametrize("resident", [None, False])
@pytest.mark.parametrize("case", ["gn", "in", "gn-odd-group"])
def test_group_norm_outlier_shift(case, resident, small_tiles):
    """Every group's first element (its shift) 1000 standard deviations out."""
    _group(case, "f32-1e4", resident=resident, outlier=True)


@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("resident", [None, False])
def test_group_norm_without_gamma_or_beta(affine, resident, small_tiles):
    _group("gn-odd-group", "f32-1e4", resident=resident, affine=affine)


def test_chunked_plan_covers_long_samples(monkeypatch):
    p = channels_last.plan(3136, 256, 32, 2)  # (32, 56, 56, 256) bfloat16, GN(32)
    assert p.chunk is not None and p.block_c == 64 and p.chunks(3136) == 13
    assert channels_last.plan(784, 128, 32, 2).chunk is None  # (64, 28, 28, 128): a slab in registers
    assert channels_last.plan(10**6, 8, 8, 4).chunks(10**6) <= channels_last.MAX_CHUNKS
    assert channels_last.plan(4, 8192, 1, 4) is None  # a group wider than MAX_GROUP_CHANNELS
    # Lanes halve down to 32-byte rows to stay resident (docs/gpu.md): 8 channels
    # in float32; half precision stops at 16 and goes chunked at 64.
    assert channels_last.plan(2048, 64, 64, 4).block_c == 8
    half = channels_last.plan(2048, 64, 64, 2)
    assert half.chunk is not None and half.block_c == 64


def test_group_norm_gradients_are_deterministic(small_tiles):
    shape, groups = GROUP_CASES["gn-odd-group"]
    x, dy = support.inputs(shape, torch.float32, offset=1e4)
    gamma, beta = support.params((shape[-1],), DEVICE)
    first = _run(nt.group_norm, x, dy, gamma, beta, groups=groups, axis=3, resident=False)[1]
    second = _run(nt.group_norm, x, dy, gamma, beta, groups=groups, axis=3, resident=False)[1]
    assert all(torch.equal(first[k], second[k]) for k in first)


# --------------------------------------------------------------------------
# Layer and RMS norm over trailing axes.

ROW_CASES = {
    "row": ((3, 7, 16), 1),
    "two-axes": ((2, 3, 4, 10), 2),
    "odd-width": ((5, 37), 1),
    "many-rows": ((130, 3), 1),
    "width-one": ((4, 1), 1),
}


def _rows(case, variant, center, *, outlier=False, affine=(True, True), rms_offset=False):
    shape, k = ROW_CASES[case]
    dtype, offset, spread = VARIANTS[variant]
    if not center and not rms_offset:
        if offset and shape[-1] == 1:
            pytest.skip("RMS norm of one value: dx = rstd * g * epsilon / (x^2 + epsilon) cancels in float32")
        offset = offset and 3.0 * spread  # no centering: an offset only scales the RMS
    at = (Ellipsis,) + (0,) * k if outlier else None  # every row's shift
    x, dy = support.inputs(shape, DTYPES[dtype], offset=offset, spread=spread, outlier_at=at)
    gamma, beta = support.params(shape[-k:], DEVICE)
    gamma, beta = (gamma if affine[0] else None), (beta if affine[1] else None)
    axes = list(range(len(shape) - k, len(shape)))
    y, grads = _run(nt.layer_norm if center else nt.rms_norm, x, dy, gamma, beta, axes=axes)
    g, b = (None if t is None else t.detach().cpu().numpy() for t in (gamma, beta))
    x64, dy64 = x.double().numpy(), dy.double().numpy()
    if center:
        want_y = reference.layer_norm(x64, axes, g, b, EPSILON)
        want = normalize_and_vjp(x64, dy64, "layer", axes, gamma=g, beta=b, epsilon=EPSILON)
    else:
        want_y = reference.rms_norm(x64, axes, g, b, EPSILON)
        want = normalize_and_vjp(x64, dy64, "rms", axes, gamma=g, beta=b, epsilon=EPSILON)
    _check(dtype, y, grads, want_y, want)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(ROW_CASES))
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_row_norms(center, case, variant, small_tiles):
    _rows(case, variant, center)


@pytest.mark.parametrize("variant", ["f32-1e4", "f32-1e6", "f16-1e3", "bf16-1e2"])
def test_rms_norm_at_the_offset(variant, small_tiles):
    """The offset itself, not 3x the spread: nearly constant rows, whose
    gradient is a small difference of large terms."""
    _rows("odd-width", variant, False, rms_offset=True)


@pytest.mark.parametrize("case", ["row", "two-axes"])
def test_layer_norm_outlier_shift(case):
    _rows(case, "f32-1e4", True, outlier=True)


@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
def test_row_norms_without_gamma_or_beta(center, affine, small_tiles):
    _rows("many-rows", "f32-1e4", center, affine=affine)


def test_row_norm_gradients_are_deterministic(small_tiles):
    x, dy = support.inputs((130, 3), torch.float32, offset=1e4)
    gamma, beta = support.params((3,), DEVICE)
    first = _run(nt.layer_norm, x, dy, gamma, beta, axes=[1])[1]
    second = _run(nt.layer_norm, x, dy, gamma, beta, axes=[1])[1]
    assert all(torch.equal(first[k], second[k]) for k in first)


# --------------------------------------------------------------------------
# Dispatch: which tensors the kernels serve.


def _hook_calls(monkeypatch):
    calls = []
    for function in (channels_last.GroupNorm, row_norm.RowNorm):
        original = function.apply

        def spy(*args, _original=original):
            calls.append(args[0].device.type)
            return _original(*args)

        monkeypatch.setattr(function, "apply", spy)
    return calls


def _each_hook(x4, x2):
    yield nt.group_norm(x4, groups=2, axis=3, gamma=None, beta=None, epsilon=EPSILON)
    yield nt.layer_norm(x2, axes=[1], gamma=None, beta=None, epsilon=EPSILON)
    yield nt.rms_norm(x2, axes=[1], gamma=None, beta=None, epsilon=EPSILON)


def test_kernels_run_only_for_cuda_tensors_unless_forced(monkeypatch):
    """CPU tensors decline (the general path runs) unless a test forces the
    interpreter; compiled kernels never take a CPU tensor."""
    calls = _hook_calls(monkeypatch)
    x4, x2 = torch.randn(2, 3, 3, 4), torch.randn(3, 8)
    assert all(y is None for y in _each_hook(x4, x2)) and calls == []
    if MODE == "interpreter":
        with nt.interpret_on_cpu():
            assert all(y is not None for y in _each_hook(x4, x2))
        assert calls == ["cpu"] * 3
    monkeypatch.setattr(runtime, "interpreted", lambda kernel: False)  # compiled kernels
    with nt.interpret_on_cpu():
        assert all(y is None for y in _each_hook(x4, x2))
    assert calls == (["cpu"] * 3 if MODE == "interpreter" else [])
    if MODE == "compiled":
        assert all(y is not None for y in _each_hook(x4.cuda(), x2.cuda()))
        assert calls == ["cuda"] * 3


def test_declines_what_the_kernels_do_not_serve(monkeypatch):
    x = torch.randn(2, 3, 3, 4, device=DEVICE)
    gamma = torch.ones(4, device=DEVICE)
    cases = {
        "channels-first": lambda: nt.group_norm(x, groups=2, axis=1, gamma=None, beta=None, epsilon=EPSILON),
        "float64": lambda: nt.group_norm(x.double(), groups=2, axis=3, gamma=None, beta=None, epsilon=EPSILON),
        "non-contiguous": lambda: nt.group_norm(x.transpose(1, 2), groups=2, axis=3, gamma=None, beta=None,
                                                epsilon=EPSILON),
        "empty": lambda: nt.group_norm(x[:0], groups=2, axis=3, gamma=None, beta=None, epsilon=EPSILON),
        "gamma-elsewhere": lambda: nt.group_norm(x, groups=2, axis=3, gamma=gamma.to("meta"), beta=None,
                                                 epsilon=EPSILON),
        "layer-norm-leading-axis": lambda: nt.layer_norm(x, axes=[1], gamma=None, beta=None, epsilon=EPSILON),
        "layer-norm-split-axes": lambda: nt.layer_norm(x, axes=[1, 3], gamma=None, beta=None, epsilon=EPSILON),
        "rms-norm-float64": lambda: nt.rms_norm(x.double(), axes=[3], gamma=None, beta=None, epsilon=EPSILON),
    }
    with nt.interpret_on_cpu():
        served = [name for name, call in cases.items() if call() is not None]
        assert served == []
        monkeypatch.setattr(row_norm, "MAX_WIDTH", 8)
        assert nt.layer_norm(x, axes=[2, 3], gamma=None, beta=None, epsilon=EPSILON) is None  # 12 > 8
        monkeypatch.setattr(channels_last, "MAX_GROUP_CHANNELS", 1)
        assert nt.group_norm(x, groups=2, axis=3, gamma=None, beta=None, epsilon=EPSILON) is None
        monkeypatch.setattr(runtime, "triton", None)  # Triton not installed
        assert nt.rms_norm(x, axes=[3], gamma=None, beta=None, epsilon=EPSILON) is None


def test_hooks_match_the_general_path():
    """Through the hook contract, against normlab's general path (torch backend)."""
    import keras

    from normlab import backends
    from normlab import ops as nops

    if keras.backend.backend() != "torch":
        pytest.skip("the general path on torch tensors needs the torch backend")
    x, _ = support.inputs((2, 4, 3, 6), torch.float32, offset=1e4)
    x = x.to(DEVICE)
    gamma, beta = (t.detach() for t in support.params((6,), DEVICE))
    with backends.disabled():
        want = {
            "group": nops.group_norm(x, groups=3, axis=-1, gamma=gamma, beta=beta, epsilon=EPSILON),
            "layer": nops.layer_norm(x, axis=[2, 3], epsilon=EPSILON),
            "rms": nops.rms_norm(x, axis=-1, gamma=gamma, beta=beta, epsilon=EPSILON),
        }
    with nt.interpret_on_cpu():
        got = {
            "group": nt.group_norm(x, groups=3, axis=3, gamma=gamma, beta=beta, epsilon=EPSILON),
            "layer": nt.layer_norm(x, axes=[2, 3], gamma=None, beta=None, epsilon=EPSILON),
            "rms": nt.rms_norm(x, axes=[3], gamma=gamma, beta=beta, epsilon=EPSILON),
        }
    for name in want:
        assert support.relative_error(got[name], want[name].cpu().numpy()) <= 2e-5, name


@pytest.mark.parametrize("op", ["group", "layer", "rms"])
def test_normlab_ops_reach_the_kernels(op, monkeypatch):
    """normlab's ops on torch get to the kernels through the torch fast path
    (normlab/backends/torch.py); on a GPU for every CUDA tensor, here for CPU
    tensors inside interpret_on_cpu()."""
    import keras

    from normlab import backends
    from normlab import ops as nops

    if keras.backend.backend() != "torch":
        pytest.skip("the torch fast path runs on the torch backend")
    calls = []
    hook = getattr(nt, f"{op}_norm")
    # The hook's result, not its call: a hook that declined (None) left the general path to answer the same.
    monkeypatch.setattr(nt, f"{op}_norm", lambda x, **kw: calls.append(hook(x, **kw)) or calls[-1])
    x, _ = support.inputs((2, 4, 3, 6), torch.float32, offset=1e4)
    x = x.to(DEVICE)
    run = {
        "group": lambda: nops.group_norm(x, groups=3, axis=-1, epsilon=EPSILON),
        "layer": lambda: nops.layer_norm(x, axis=-1, epsilon=EPSILON),
        "rms": lambda: nops.rms_norm(x, axis=-1, epsilon=EPSILON),
    }[op]
    with nt.interpret_on_cpu():
        y = run()
    assert len(calls) == 1 and calls[0] is not None, f"{op}: the torch fast path did not reach the Triton kernel"
    with backends.disabled():
        want = run()
    assert support.relative_error(y, want.cpu().numpy()) <= 2e-5


def test_no_host_reads_in_the_kernels_source():
    """The static check of tests/backends/test_no_host_sync.py, on this package."""
    from pathlib import Path

    from tests.backends.test_no_host_sync import host_reads

    root = Path(nt.__file__).parent
    found = [line for path in sorted(root.glob("*.py")) for line in host_reads(path.read_text(), path.name)]
    assert not found, found


# --------------------------------------------------------------------------
# On a GPU: the compiled kernels.


def _cuda_case(hook, shape, dtype, **kwargs):
    """Compiled kernels on CUDA against the float64 closed forms on the host."""
    x, dy = support.inputs(shape, dtype, offset=1e4 if dtype == torch.float32 else 1e2, spread=8.0)
    k = shape[-1:] if "groups" in kwargs else tuple(shape[a] for a in kwargs["axes"])
    gamma, beta = support.params(k, "cuda")
    xg = x.cuda().requires_grad_(True)
    y = hook(xg, gamma=gamma, beta=beta, epsilon=EPSILON, **kwargs)
    assert y is not None and y.is_cuda
    grads = dict(zip(["dx", "dgamma", "dbeta"], torch.autograd.grad(y, [xg, gamma, beta], dy.cuda())))
    g, b = gamma.detach().cpu().numpy(), beta.detach().cpu().numpy()
    x64, dy64 = x.double().numpy(), dy.double().numpy()
    if "groups" in kwargs:
        want = normalize_and_vjp(x64, dy64, "group", len(shape) - 1, groups=kwargs["groups"], gamma=g, beta=b,
                                 epsilon=EPSILON)
    elif hook is nt.layer_norm:
        want = normalize_and_vjp(x64, dy64, "layer", kwargs["axes"], gamma=g, beta=b, epsilon=EPSILON)
    else:
        want = normalize_and_vjp(x64, dy64, "rms", kwargs["axes"], gamma=g, beta=b, epsilon=EPSILON)
    _check(str(dtype).removeprefix("torch."), y, grads, want["y"], want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", [
    ("group", (4, 28, 28, 128), 32),    # resident
    ("group", (2, 56, 56, 256), 32),    # chunked
    ("group", (2, 56, 56, 96), 96),     # instance norm, chunked
    ("group", (3, 9, 9, 30), 10),       # odd group width
    ("layer", (257, 4096), None),
    ("layer", (33, 7, 100), None),
    ("rms", (257, 4096), None),
], ids=str)
@pytest.mark.gpu
@requires_gpu
def test_gpu_compiled_kernels(case, dtype):
    op, shape, groups = case
    if op == "group":
        _cuda_case(nt.group_norm, shape, dtype, groups=groups, axis=len(shape) - 1)
    else:
        _cuda_case(nt.layer_norm if op == "layer" else nt.rms_norm, shape, dtype, axes=[len(shape) - 1])


@pytest.mark.gpu
@requires_gpu
def test_gpu_no_host_sync():
    """Forward and backward of every kernel with CUDA's sync debug mode set to error."""
    x4 = torch.randn(4, 20, 20, 64, device="cuda", requires_grad=True)
    x2 = torch.randn(64, 512, device="cuda", requires_grad=True)
    gamma4 = torch.ones(64, device="cuda", requires_grad=True)
    gamma2 = torch.ones(512, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for resident in (None, False):
            nt.group_norm(x4, groups=8, axis=3, gamma=gamma4, beta=gamma4, epsilon=EPSILON,
                          resident=resident).sum().backward()
        nt.layer_norm(x2, axes=[1], gamma=gamma2, beta=gamma2, epsilon=EPSILON).sum().backward()
        nt.rms_norm(x2, axes=[1], gamma=gamma2, beta=None, epsilon=EPSILON).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("groups", [5, 0, 9, -1])
def test_group_norm_declines_groups_that_do_not_divide_the_channels(groups):
    """groups=5 of 8 channels ran with the wrong grouping and wrote past the (N, G) statistics (a heap
    corruption in the interpreter; out of bounds on a GPU); 0, 9 and -1 raised inside the planning."""
    x = torch.randn(2, 3, 8)
    with nt.interpret_on_cpu():
        assert nt.group_norm(x, groups=groups, axis=2, gamma=None, beta=None, epsilon=EPSILON) is None


def test_the_hooks_decline_under_a_tracer():
    """make_fx traced into the kernels' launch (it failed on the storage of a fake tensor; compiled, the
    kernel would run outside the recorded graph)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def call(v):
        got = nt.layer_norm(v, axes=[2], gamma=None, beta=None, epsilon=EPSILON)
        return v if got is None else got

    with nt.interpret_on_cpu():
        graph = make_fx(call)(torch.randn(2, 3, 8))
    assert not any("triton" in str(node.target).lower() for node in graph.graph.nodes)
