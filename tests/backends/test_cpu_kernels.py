"""normlab's compiled CPU kernels (:mod:`normlab.backends.cpu`, called by
:mod:`normlab.backends.torch_cpu`): parity with the float64 closed form and
the general path at large offsets and with outliers, both schedules, every
gradient subset, double backward, results independent of the thread
count, reductions longer than ATen's bound, and the build: its cache, and
the fallback to ATen's kernels where there is no compiler."""

from __future__ import annotations

import logging
import os
import shutil

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normlab import ops as nops
from normlab.backends import cpu
from tests.backends._kernel_calls import graph_nodes, record_kernel_calls
from tests.backends.test_fast_paths import CASES, _apply, _check, _inputs

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch hooks call the kernels"),
    pytest.mark.usefixtures("keras_on_cpu"),  # CPU tensors, on a GPU machine too
]

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")

#: The float32 cases of test_fast_paths the kernels serve.
SERVED = ["gn-nhwc", "gn-nchw", "in-nhwc", "in-nhwc-large", "in-nchw", "gn-rank2", "gn-rank5", "ln-last",
          "ln-last2", "bn-nhwc", "bn-nhwc-c6", "bn-rank2", "bn-nchw", "rms-last", "rms-last2"]

#: More shapes: a batch of 8 or more runs one task per sample (fused), fewer
#: samples split each into chunks of positions; odd sizes everywhere.
EXTRA = {
    "gn-fused": ("group", (9, 5, 7, 12), 3, 3),
    "gn-split": ("group", (2, 37, 41, 6), 3, 2),
    "in-split": ("group", (3, 300, 5), 2, 5),
    "bn-split": ("batch", (5, 29, 31, 3), 3, None),
    "ln-odd": ("layer", (7, 1037), [1], None),
    "ln-long-rows": ("layer", (3, 5000), [1], None),
    # Enough rows for several backward tasks (each keeps partial parameter sums).
    "ln-many-rows": ("layer", (300, 40), [1], None),
    # RMS norm: the same rows, uncentered.
    "rms-odd": ("rms", (7, 1037), [1], None),
    "rms-long-rows": ("rms", (3, 5000), [1], None),
    # (N, C) group norm: rows of C // groups channels, the parameters repeating every `groups` rows.
    "gn-features": ("group", (70, 24), 1, 4),
    # Channels-first: rows of a group's channels, each a run of positions.
    "gn-cf": ("group", (3, 12, 5, 70), 1, 4),
    "in-cf": ("group", (9, 6, 301), 1, 6),
    # Channels-first batch norm: per channel, runs of positions across samples.
    "bn-cf": ("batch", (6, 5, 7, 43), 1, None),
    "bn-cf-rank3": ("batch", (70, 3, 1), 1, None),
}


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of the kernel entry points called (``_forward``, ``_backward``)."""
    calls = record_kernel_calls(monkeypatch)
    for case, spec in EXTRA.items():
        monkeypatch.setitem(CASES, case, spec)
    return calls


@needs_compiler
def test_the_kernels_build_and_load():
    assert cpu.available(), "the CPU kernels did not build (see the normlab logger)"


@needs_compiler
@pytest.mark.parametrize("case", SERVED + sorted(EXTRA))
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_parity_at_offsets(kernel_calls, case, offset):
    _check(case, "float32", offset)
    assert kernel_calls == ["_forward", "_backward"], kernel_calls


@needs_compiler
@pytest.mark.parametrize("case", SERVED + sorted(EXTRA))
@pytest.mark.parametrize("dtype, offset", [("bfloat16", 0.0), ("bfloat16", 1e4), ("float16", 0.0),
                                           ("float16", 500.0)])
def test_half_precision_parity(kernel_calls, case, dtype, offset):
    """bfloat16 and float16 data: the kernels serve them (float32
    statistics), as close to the float64 closed form as the general path."""
    _check(case, dtype, offset)
    assert kernel_calls == ["_forward", "_backward"], kernel_calls


def _finite_halves(dtype):
    """Every finite non-negative value of ``dtype`` (bfloat16: those whose
    square is a normal float32), as float32."""
    import torch

    values = torch.arange(0, 2**15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    keep = torch.isfinite(values)
    if dtype == torch.bfloat16:
        keep &= (values == 0) | ((values > 1e-18) & (values < 1e18))
    return values[keep]


@needs_compiler
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_reads_are_exact(dtype):
    """Every finite float16 (and bfloat16 in range), subnormals included,
    is read as its exact float32 value: rows ``[v, -v]`` have mean 0 and
    variance ``v * v``, exact in float32 and summed exactly."""
    import torch

    from normlab.backends import torch_cpu

    half = getattr(torch, dtype)
    v = _finite_halves(half)
    x = torch.stack([v, -v], dim=1).to(half)
    _, mean, var = torch_cpu.rows(x, torch.zeros(v.numel()), None, None, 0.0)
    assert bool((mean == 0).all())
    wrong = var != v * v
    assert not bool(wrong.any()), f"{int(wrong.sum())} values read wrong, first {v[wrong][:5].tolist()}"


@needs_compiler
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["rows", "slices"])
def test_half_precision_writes_round_as_torch(dtype, layout):
    """Outputs are rounded to nearest even exactly as ``Tensor.to`` rounds:
    with gamma 0 the output is beta, here float32 values of every
    magnitude (random bits, ties, float16's overflow threshold and
    subnormals, infinities, NaN; not -0.0, which the sum ``0 * d + beta``
    turns into +0.0 where ``d`` is positive)."""
    import torch

    from normlab.backends import torch_cpu

    half = getattr(torch, dtype)
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, size=1 << 16, dtype=np.uint64).astype(np.uint32)
    special = np.array([65504, 65519.99, 65520, 2.0**-25, 2.0**-24 * 1.5, 1 + 2.0**-11, 1 + 3 * 2.0**-11,
                        1 + 2.0**-8, 1 + 3 * 2.0**-8, np.inf, -np.inf, np.nan, 0.0], np.float32)
    beta = torch.from_numpy(np.concatenate([bits.view(np.float32), special]))
    width = beta.numel()
    x = torch.tensor(rng.normal(size=(2, 3, width)), dtype=half)
    gamma = torch.zeros(width)
    if layout == "rows":
        y, _, _ = torch_cpu.rows(x.reshape(6, width), torch.zeros(6), gamma, beta, 1e-3)
    else:
        y, _, _ = torch_cpu.slices(x, torch.zeros(2, width), gamma, beta, 1, 1e-3)
    expected = beta.to(half).expand(y.reshape(-1, width).shape)
    y = y.reshape(-1, width)
    same = (y.view(torch.int16) == expected.view(torch.int16)) | (torch.isnan(y) & torch.isnan(expected))
    assert bool(same.all()), f"{int((~same).sum())} rounded differently, e.g. {beta[(~same).any(0)][:5].tolist()}"


@needs_compiler
@pytest.mark.parametrize("case", ["gn-nhwc", "gn-split", "gn-cf", "in-nhwc", "ln-last", "bn-nhwc", "bn-split",
                                  "bn-cf", "rms-last"])
@pytest.mark.parametrize("outlier", [1e3, -1e5])
def test_parity_with_an_outlier_first(kernel_calls, case, outlier):
    _check(case, "float32", 1e4, outlier=outlier)


@needs_compiler
@pytest.mark.parametrize("case", ["gn-fused", "gn-split", "gn-cf", "ln-odd", "bn-split", "bn-cf", "rms-odd"])
def test_parity_without_affine(kernel_calls, case):
    _check(case, "float32", 1e4, affine=False)
    assert kernel_calls == ["_forward", "_backward"]


@needs_compiler
@pytest.mark.parametrize("case", ["gn-fused", "gn-split", "gn-features", "gn-cf", "ln-odd", "bn-split", "bn-cf",
                                  "rms-odd"])
@pytest.mark.parametrize("wanted", ["x", "params", "gamma"])
def test_gradient_subsets(kernel_calls, case, wanted):
    """Only the input's, only the parameters', or only gamma's gradient
    (beta frozen): each matches the general path's."""
    import torch

    from normlab import backends

    x_np, dy_np, gamma_np, beta_np = _inputs(case, 100.0)

    def grads():
        x = torch.tensor(x_np, dtype=torch.float32, requires_grad=wanted == "x")
        gamma = torch.tensor(gamma_np, requires_grad=wanted in ("params", "gamma"))
        beta = torch.tensor(beta_np, requires_grad=wanted == "params")
        y, _ = _apply(case, x, gamma, beta)
        sources = [t for t in (x, gamma, beta) if t.requires_grad]
        return torch.autograd.grad(y, sources, torch.tensor(dy_np, dtype=torch.float32))

    fast = grads()
    with backends.disabled():
        general = grads()
    for got, ref in zip(fast, general):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-5, atol=2e-4)
    assert "_backward" in kernel_calls


@needs_compiler
@pytest.mark.parametrize("case", ["gn-fused", "gn-split", "gn-features", "gn-cf", "ln-odd", "bn-split", "bn-cf",
                                  "rms-odd"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_double_backward_matches_the_general_path(kernel_calls, case, dtype, tol):
    """A gradient penalty through the kernels' backward (in plain ops, in
    float32 rounded to the input's dtype)."""
    import torch

    from normlab import backends

    x_np, dy_np, gamma_np, beta_np = _inputs(case, 3.0)
    dtype = getattr(torch, dtype)

    def penalty_grads():
        x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
        gamma = torch.tensor(gamma_np, requires_grad=True)
        y, _ = _apply(case, x, gamma, torch.tensor(beta_np))
        (dx,) = torch.autograd.grad((y * torch.tensor(dy_np, dtype=dtype)).sum(), x, create_graph=True)
        assert dx.dtype == dtype
        return [g.float().numpy() for g in torch.autograd.grad((dx.float() ** 2).sum(), [x, gamma])]

    fast = penalty_grads()
    assert kernel_calls == ["_forward"]
    with backends.disabled():
        general = penalty_grads()
    for got, ref in zip(fast, general):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * float(np.max(np.abs(ref))))


@needs_compiler
@pytest.mark.parametrize("case", ["gn-fused", "gn-split", "gn-features", "in-cf", "ln-long-rows", "ln-many-rows",
                                  "bn-split", "bn-cf", "rms-long-rows"])
def test_results_do_not_depend_on_the_thread_count(kernel_calls, case):
    """Bit for bit: the split into tasks is a function of the shape only."""
    import torch

    from normlab.backends import torch_cpu

    x_np, dy_np, gamma_np, beta_np = _inputs(case, 1e3)
    threads = torch.get_num_threads()

    def run(n):
        torch.set_num_threads(n)
        x = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
        gamma = torch.tensor(gamma_np, requires_grad=True)
        y, _ = _apply(case, x, gamma, torch.tensor(beta_np))
        y.backward(torch.tensor(dy_np, dtype=torch.float32))
        return [t.detach().numpy().copy() for t in (y, x.grad, gamma.grad)]

    old = torch_cpu.MIN_PARALLEL
    torch_cpu.MIN_PARALLEL = 0  # threads for these small inputs too
    try:
        one, several = run(1), run(4)
    finally:
        torch_cpu.MIN_PARALLEL = old
        torch.set_num_threads(threads)
    for a, b in zip(one, several):
        np.testing.assert_array_equal(a, b)


@needs_compiler
@pytest.mark.parametrize("case", SERVED + sorted(EXTRA))
def test_where_autograd_records_nothing_the_same_values(kernel_calls, case):
    """Under ``no_grad`` or ``inference_mode``, or with no input that
    requires a gradient, the hooks call the kernels without their
    ``autograd.Function``: the same output and statistics bit for bit, and
    no graph."""
    import contextlib

    import torch

    x_np, _, gamma_np, beta_np = _inputs(case, 1e3)

    def run(requires_grad, context):
        x = torch.tensor(x_np, dtype=torch.float32, requires_grad=requires_grad)
        gamma = torch.tensor(gamma_np, requires_grad=requires_grad)
        with context:
            y, stats = _apply(case, x, gamma, torch.tensor(beta_np))
        return y, [t.detach().numpy().copy() for t in (y, *(stats or ()))]

    recorded, expected = run(True, contextlib.nullcontext())
    assert "KernelNormBackward" in graph_nodes(recorded)
    for requires_grad, context in ((True, torch.no_grad()), (False, contextlib.nullcontext()),
                                   (True, torch.inference_mode())):
        y, got = run(requires_grad, context)
        assert y.grad_fn is None and not y.requires_grad
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)
    assert kernel_calls == ["_forward"] * 4, kernel_calls


@needs_compiler
@pytest.mark.parametrize("channels", [1, 3, 5, 10, 12, 24, 31, 33])
@pytest.mark.parametrize("samples, groups", [(9, 1), (2, 0)])
def test_rows_of_few_channels_read_in_tiles(kernel_calls, monkeypatch, channels, samples, groups):
    """Channels-last rows of fewer than 32 channels are read several at a
    time (common.h, tile_rows): every width, with position counts that
    leave rows over after the last whole tile of a block, both schedules
    (9 samples: one task each; 2: chunks), group and instance norm."""
    groups = groups or channels
    monkeypatch.setitem(CASES, "tiles", ("group", (samples, 3, 67, channels), 3, groups))
    _check("tiles", "float32", 1e4)
    monkeypatch.setitem(CASES, "tiles-bn", ("batch", (samples, 131, channels), 2, None))
    _check("tiles-bn", "float32", 1e4)
    assert kernel_calls == ["_forward", "_backward"] * 2, kernel_calls


@needs_compiler
@pytest.mark.parametrize("op, shape, axis", [("batch", (3 * 2**16 + 5, 4), 1), ("batch", (5, 2, 2**16 + 7), 1),
                                             ("layer", (2, 3 * 2**16 + 5), [1])])
def test_reductions_beyond_aten_bound(kernel_calls, op, shape, axis):
    """Reductions longer than policy.MAX_REDUCTION (where ATen's sequential
    sums decline) are served, and exact to float rounding: the kernels sum
    blocks in float and the block sums in double."""
    import torch

    from tests.backends._closed_form import normalize_and_vjp

    rng = np.random.default_rng(0)
    x_np = (1e3 + rng.normal(0.5, 2.0, size=shape)).astype("float32")
    dy_np = rng.normal(size=shape).astype("float32")
    pshape = (shape[1],)
    gamma_np = rng.uniform(0.5, 1.5, size=pshape).astype("float32")
    beta_np = rng.normal(size=pshape).astype("float32")
    x = torch.tensor(x_np, requires_grad=True)
    gamma, beta = torch.tensor(gamma_np, requires_grad=True), torch.tensor(beta_np, requires_grad=True)
    if op == "batch":
        y = nops.batch_norm(x, axis=axis, gamma=gamma, beta=beta, epsilon=1e-3, training=True)
    else:
        y = nops.layer_norm(x, axis, gamma=gamma, beta=beta, epsilon=1e-3)
    y.backward(torch.tensor(dy_np))
    ref = normalize_and_vjp(x_np.astype("float64"), dy_np.astype("float64"), op, axis, gamma=gamma_np, beta=beta_np,
                            epsilon=1e-3)
    assert kernel_calls == ["_forward", "_backward"]
    for got, key in ((y.detach(), "y"), (x.grad, "dx"), (gamma.grad, "dgamma"), (beta.grad, "dbeta")):
        scale = max(1.0, float(np.max(np.abs(ref[key]))))
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=0, atol=2e-5 * scale, err_msg=key)


@needs_compiler
def test_a_non_contiguous_cotangent(kernel_calls):
    """``y.sum().backward()`` hands the backward an expanded (stride 0) cotangent."""
    import torch

    x = torch.tensor(_inputs("gn-fused", 10.0)[0], dtype=torch.float32, requires_grad=True)
    nops.group_norm(x, 3, 3, epsilon=1e-3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.0, atol=1e-4)  # a normalized slice sums to zero
    assert kernel_calls == ["_forward", "_backward"]


@needs_compiler
def test_the_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path))
    first = cpu.build()
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cpu.build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left


def test_without_a_compiler_the_aten_kernels_serve(tmp_path, monkeypatch, caplog, kernel_calls):
    """No compiler: a warning on the normlab logger, and the same results
    from ATen's kernels on centered data."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "_state", {})
    with caplog.at_level(logging.WARNING, logger="normlab"):
        assert cpu.library() is None
        _check("gn-nhwc", "float32", 1e4)
    assert "no C compiler" in caplog.text
    assert kernel_calls == []


def test_turned_off_by_the_environment(monkeypatch, kernel_calls):
    monkeypatch.setenv("NORMLAB_CPU_KERNELS", "0")
    assert cpu.library() is None
    _check("ln-last", "float32", 1e4)
    assert kernel_calls == []


def test_a_failing_build_says_why(tmp_path, monkeypatch):
    """A compiler that fails: build() raises with its message."""
    script = tmp_path / "cc"
    script.write_text("#!/bin/sh\necho 'cc: error: no space left' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="no space left"):
        cpu.build()
    assert list((tmp_path / "cache").iterdir()) == []


@st.composite
def _kernel_inputs(draw):
    """A shape and op the kernels serve: group norm of any group count
    (instance norm included) on channels-last or channels-first data,
    batch norm on either layout, or layer norm over 1 or 2 trailing axes; an
    offset up to 1e6, a spread from 1e-2 to 1e2."""
    op = draw(st.sampled_from(["group", "group-cf", "batch", "batch-cf", "layer"]))
    n = draw(st.integers(1, 12))
    positions = draw(st.lists(st.integers(1, 9), min_size=0, max_size=2))
    if op == "layer":
        width = draw(st.lists(st.integers(1, 40), min_size=1, max_size=2))
        shape, axis, groups = (n, *positions, *width), list(range(1 + len(positions), 1 + len(positions) + len(width))), None
    else:
        # Instance norm needs a spatial axis (normlab rejects it on rank 2).
        per, g = draw(st.integers(1 if positions else 2, 5)), draw(st.integers(1, 6))
        if op.endswith("-cf"):
            op, shape, axis = op[:-3], (n, per * g, *positions), 1
        else:
            shape, axis = (n, *positions, per * g), 1 + len(positions)
        groups = g if op == "group" else None
    offset = draw(st.sampled_from([0.0, -3.0, 1e2, 1e4, -1e6]))
    spread = draw(st.sampled_from([1e-2, 1.0, 1e2]))
    return op, shape, axis, groups, offset, spread


@needs_compiler
@given(_kernel_inputs(), st.integers(0, 2**16))
def test_property_matches_the_float64_closed_form(inputs, seed):
    """y, dx, dgamma and dbeta against float64, relative to the spread:
    whatever the shape, group count, offset and scale."""
    import torch

    from tests.backends._closed_form import normalize_and_vjp

    op, shape, axis, groups, offset, spread = inputs
    rng = np.random.default_rng(seed)
    x_np = (offset + spread * rng.normal(size=shape)).astype("float32")
    dy_np = rng.normal(size=shape).astype("float32")
    pshape = tuple(shape[a] for a in axis) if op == "layer" else (shape[axis],)
    gamma_np = rng.uniform(0.5, 1.5, size=pshape).astype("float32")
    beta_np = rng.normal(size=pshape).astype("float32")
    count = int(np.prod([shape[a] for a in axis])) if op == "layer" else None
    if op == "batch" and np.prod(shape) // shape[axis] < 2 or count == 1:
        return  # one value per slice: no variance to normalize by
    x = torch.tensor(x_np, requires_grad=True)
    gamma, beta = torch.tensor(gamma_np, requires_grad=True), torch.tensor(beta_np, requires_grad=True)
    if op == "group":
        y = nops.group_norm(x, groups, axis, gamma=gamma, beta=beta, epsilon=1e-3)
    elif op == "layer":
        y = nops.layer_norm(x, axis, gamma=gamma, beta=beta, epsilon=1e-3)
    else:
        y = nops.batch_norm(x, axis=axis, gamma=gamma, beta=beta, epsilon=1e-3, training=True)
    y.backward(torch.tensor(dy_np))
    ref = normalize_and_vjp(x_np.astype("float64"), dy_np.astype("float64"), op, axis, groups=groups,
                            gamma=gamma_np, beta=beta_np, epsilon=1e-3)
    for got, key in ((y.detach(), "y"), (x.grad, "dx"), (gamma.grad, "dgamma"), (beta.grad, "dbeta")):
        scale = max(1.0, float(np.max(np.abs(ref[key]))))
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=0, atol=3e-5 * scale, err_msg=f"{key} {inputs}")


@needs_compiler
def test_a_read_only_cache_folder_falls_back_to_a_private_temporary_one(tmp_path, monkeypatch):
    import tempfile

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(blocked / "cache"))  # cannot be created
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    built = cpu.build()
    assert built.parent == tmp_path / "tmp" / f"normlab-{os.getuid()}" and built.exists()
    assert cpu.build() == built


@needs_compiler
def test_non_contiguous_parameters(kernel_calls):
    """A transposed gamma and beta (copied to contiguous memory for the
    kernel, and kept alive through the call)."""
    import torch

    from normlab import backends

    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(5.0, 2.0, size=(6, 4, 10)), dtype=torch.float32)
    gamma = torch.tensor(rng.uniform(0.5, 1.5, size=(10, 4)), dtype=torch.float32).T
    beta = torch.tensor(rng.normal(size=(10, 4)), dtype=torch.float32).T
    assert not gamma.is_contiguous()
    dy = torch.tensor(rng.normal(size=(6, 4, 10)), dtype=torch.float32)

    def run():
        xs, g, b = (t.clone().requires_grad_(True) for t in (x, gamma, beta))
        y = nops.layer_norm(xs, [1, 2], gamma=g, beta=b, epsilon=1e-3)
        y.backward(dy)
        return [t.detach().numpy() for t in (y, xs.grad, g.grad, b.grad)]

    fast = run()
    assert kernel_calls == ["_forward", "_backward"]
    with backends.disabled():
        general = run()
    for got, ref in zip(fast, general):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_uncentered_rows_take_plain_rows_only():
    """RMS norm's rows are plain rows (its double backward's composite takes no groups or positions)."""
    import torch

    from normlab.backends import torch_cpu

    x = torch.ones(6, 20)
    with pytest.raises(ValueError, match="uncentered rows take groups=1, positions=1"):
        torch_cpu.rows(x, None, None, None, 1e-5, groups=2, positions=5, centered=False)
    with pytest.raises(ValueError, match="uncentered rows take groups=1, positions=1 and no shift"):
        torch_cpu.rows(x, torch.zeros(6), None, None, 1e-5, centered=False)


def test_a_calls_working_memory_is_one_buffer_of_aligned_pieces():
    """:func:`~normlab.backends.torch_cpu._scratch`: each piece 64-byte
    aligned (as torch's own allocations), none overlapping, all inside the buffer."""
    import torch

    from normlab.backends import torch_cpu

    pieces = [(5, 8), (7, 4), (1, 4), (100, 8)]
    *addresses, buffer = torch_cpu._scratch(torch.zeros(3), *pieces)
    assert all(a % 64 == 0 for a in addresses)
    ends = [a + count * size for a, (count, size) in zip(addresses, pieces)]
    assert all(end <= start for end, start in zip(ends, addresses[1:]))
    assert addresses[0] == buffer.data_ptr() and ends[-1] <= buffer.data_ptr() + buffer.numel()
