"""No normlab op reads a tensor's value on the host.

A value read in Python (``.item()``, ``bool(tensor)``, ``float(tensor)``,
``.tolist()``, ``.numpy()``, a branch on a tensor) is a device-to-host sync
on a GPU, a data-dependent guard or graph break for ``torch.compile``, an
error under ``jax.jit`` and ``tf.function``, and what the ONNX exporter
cannot take. Three checks keep the ops free of them:

* a static one over the source of ``normlab/ops`` and ``normlab/backends``
  (every backend, no tensors needed);
* on torch, a runtime one: a ``TorchDispatchMode`` that records
  ``aten._local_scalar_dense`` (what ``.item()``, ``bool()``, ``float()``
  and ``int()`` of a tensor dispatch to), the other ops that return a
  Python value or a tensor whose size depends on the values (``x[mask]``,
  ``unique``), plus ``Tensor.numpy``/``tolist``/``__array__``, during an
  eager forward and backward of every layer in :func:`normlab.registry`
  with the fast paths on;
* the compile tests (``tests/compile``), which trace every layer with
  ``torch.compile(fullgraph=True)``, ``jax.jit`` and
  ``tf.function(jit_compile=True)``.

The same dispatch mode records the other direction: a tensor made from Python
data (``aten.lift_fresh``: ``torch.tensor(2.0)``, and every Keras op given a
Python number, ``ops.maximum(x, 1.0)``, through ``convert_to_tensor``). On a
GPU that tensor is made on the host and copied to the device, a copy that
blocks the host until the stream has run everything queued before it. Keras'
own layers make none in a training step; normlab's make none either.
"""

from __future__ import annotations

import ast
import pathlib

import keras
import numpy as np
import pytest

import normlab
from normlab import backends
from tests.backends import _layers

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[2] / "normlab"
SCANNED = sorted((ROOT / "ops").glob("*.py")) + sorted((ROOT / "backends").glob("*.py"))

# Methods that copy a tensor's value to the host.
_HOST_METHODS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}
# Module aliases whose calls produce tensors.
_TENSOR_MODULES = {"torch", "F", "jnp", "jax", "lax", "tf", "ops", "keras", "tnp"}
# Calls on those modules that answer a question about the program, not the data.
_STATIC_CALLS = {"executing_eagerly", "is_tensor", "is_compiling", "is_exporting", "is_in_onnx_export",
                 "is_tracing", "is_scripting", "is_grad_enabled", "backend", "standardize_dtype", "typeof"}
# Tensor methods whose result is a tensor that a Python branch would read.
_TENSOR_REDUCTIONS = {"any", "all", "sum", "mean", "max", "min", "amax", "amin", "abs", "square", "isfinite"}


def _makes_tensor(node) -> bool:
    """Whether an expression contains a call that returns a tensor."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            base = sub.func.value
            if isinstance(base, ast.Name) and base.id in _TENSOR_MODULES and sub.func.attr not in _STATIC_CALLS:
                return True
            if sub.func.attr in _TENSOR_REDUCTIONS and not (isinstance(base, ast.Name) and base.id in ("math", "np")):
                return True
    return False


def _may_be_tensor(node) -> bool:
    """Whether ``bool(node)``/``float(node)``/``int(node)`` may read a tensor:
    the argument compares values (a tensor comparison is a tensor; identity
    and membership tests are not) or calls a tensor operation. Names,
    attributes (``epsilon``, ``kernel.shape[-1]``) and plain Python calls
    (``math.prod``) are static."""
    compares = (
        sub for sub in ast.walk(node)
        if isinstance(sub, ast.Compare)
        and not all(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in sub.ops)
    )
    return any(True for _ in compares) or _makes_tensor(node)


def host_reads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: what`` for each host read in ``source`` (docstrings are
    strings, not code, so their examples are not scanned)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if isinstance(func, ast.Attribute) and name in _HOST_METHODS:
                found.append(f"{where}: .{name}()")
            elif name == "convert_to_numpy":
                found.append(f"{where}: convert_to_numpy()")
            elif isinstance(func, ast.Name) and name in ("bool", "float", "int", "complex") and any(
                _may_be_tensor(arg) for arg in node.args
            ):
                found.append(f"{where}: {name}() of a tensor expression")
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)) and _makes_tensor(node.test):
            found.append(f"{where}: a Python branch on a tensor")
        elif isinstance(node, ast.BoolOp) and any(_makes_tensor(v) for v in node.values):
            found.append(f"{where}: `and`/`or` of a tensor")
    return found


def test_static_check_finds_host_reads():
    """The checker itself: each pattern it must catch, and static code it must leave alone."""
    bad = {
        "bool(ratio <= 1.0)": "bool()",
        "float(torch.max(x))": "float()",
        "int((x > 0).sum())": "int()",
        "x.max().item()": ".item()",
        "mean.tolist()": ".tolist()",
        "ops.convert_to_numpy(x)": "convert_to_numpy",
        "if torch.any(x > 0):\n    pass": "branch",
        "if (x > 0).all():\n    pass": "branch",
        "y = a if ops.all(x) else b": "branch",
        "ok = epsilon > 0 and jnp.all(x)": "`and`",
    }
    for source, what in bad.items():
        found = host_reads(source)
        assert found and what.strip("`") in found[0], f"missed {what} in {source!r}: {found}"
    good = [
        "float(epsilon)", "int(groups)", "int(kernel.shape[-1])", "float(math.prod(shape))",
        "bool(manual.varying if manual is not None else None)", "x.item", '"""bool(x > 0)"""',
        "if epsilon > 0:\n    pass", "n = x.shape[0] if x.ndim > 2 else 1", "if tf.executing_eagerly():\n    pass",
    ]
    for source in good:
        assert host_reads(source) == [], source


def test_no_host_reads_in_ops_and_backends_source():
    found = []
    for path in SCANNED:
        found += host_reads(path.read_text(), str(path.relative_to(ROOT.parent)))
    assert not found, "host reads of tensor values:\n" + "\n".join(found)


def test_cases_cover_the_registry():
    assert not _layers.uncovered_names(), (
        f"registered norms without a case in tests/backends/_layers.py: {sorted(_layers.uncovered_names())}"
    )


# --------------------------------------------------------------------------
# torch: a dispatch mode that records every op returning a Python value.


def _host_read_guard():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    # .item(), bool(), float(), int() of a tensor all end in _local_scalar_dense;
    # the others return Python values directly, or a tensor whose size depends on
    # the values (boolean indexing's nonzero, masked_select, unique): on a GPU the
    # host waits for that size.
    forbidden = {aten._local_scalar_dense, aten.equal, aten.is_nonzero, aten.allclose, aten.is_same_size,
                 aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
                 aten.repeat_interleave}

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.reads = []
            self.copies = []  # tensors made from Python data, with the normlab line that made each
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket.__name__)
            if func.overloadpacket in forbidden or (func.overloadpacket is aten.index and any(
                    getattr(i, "dtype", None) == torch.bool for i in args[1])):  # x[mask]: a nonzero inside
                self.reads.append(str(func))
            if func.overloadpacket is aten.lift_fresh:
                self.copies.append(_normlab_line())
            return func(*args, **(kwargs or {}))

    return HostReads()


def _normlab_line() -> str:
    """``file:line`` of the innermost normlab frame calling (or ``?``)."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if f"{ROOT}/" in frame.filename:
            return f"{pathlib.Path(frame.filename).relative_to(ROOT.parent)}:{frame.lineno}"
    return "?"


@pytest.fixture
def host_reads_of(monkeypatch):
    """A context manager recording host reads of torch tensors: the dispatch
    mode, and ``Tensor.numpy``/``tolist``/``__array__`` (which read memory
    without dispatching an op)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def guard():
        mode = _host_read_guard()
        for method in ("numpy", "tolist", "__array__"):
            original = getattr(torch.Tensor, method)

            def recording(self, *args, _original=original, _method=method, **kwargs):
                mode.reads.append(f"Tensor.{_method}")
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, recording)
        with mode:
            yield mode
        monkeypatch.undo()

    return guard


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_guard_sees_host_reads_and_the_backward(host_reads_of):
    import torch

    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2.0

        @staticmethod
        def backward(ctx, dy):
            return dy * float(dy.sum() > 0)

    x = torch.ones(3, requires_grad=True)
    with host_reads_of() as mode:
        ReadsInBackward.apply(x).sum().backward()
    assert mode.reads == ["aten._local_scalar_dense.default"], mode.reads
    for read in (lambda t: t.max().item(), lambda t: bool(t.all()), lambda t: t.tolist(), lambda t: np.asarray(t),
                 lambda t: t[t > 0], lambda t: torch.unique(t)):
        with host_reads_of() as mode:
            read(torch.ones(2))
        assert mode.reads, "missed a host read"


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_guard_sees_tensors_made_from_python_numbers(host_reads_of):
    import torch

    from normlab.ops.axes import scalar

    x = torch.ones(3)
    for copy in (lambda: torch.tensor(2.0), lambda: keras.ops.maximum(x, 1.0), lambda: keras.ops.where(x > 0, x, 0.0),
                 lambda: keras.ops.convert_to_tensor(1.0, "float32")):
        with host_reads_of() as mode:
            copy()
        assert len(mode.copies) == 1, mode.copies
    # The backend's own operators take a number as a scalar; normlab's 0-d
    # tensor of a number is a zero plus it.
    with host_reads_of() as mode:
        y = keras.ops.maximum(x * 2.0 + 1.0, scalar(1.0, "float32"))
    assert mode.copies == [] and y.tolist() == [3.0] * 3


#: Layers known to read a value on the host, with the change they need (in
#: files this test does not own); strict, so the mark goes once they are fixed.
KNOWN_HOST_READS: dict[str, str] = {}


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("case_id", [
    pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=KNOWN_HOST_READS[i])) if i in KNOWN_HOST_READS else i
    for i in sorted(_layers.BY_ID)
])
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_no_host_reads_in_eager_forward_and_backward(case_id, offset, host_reads_of, monkeypatch):
    """Every layer, forward and backward, eager, fast paths on (they also
    serve offsets beyond the spread without deciding anything on the host).
    normlab's compiled CPU kernels (which take float32 CPU tensors by
    pointer, beside the dispatcher) count as the fast path where they ran
    both ways."""
    import torch

    from tests.backends._kernel_calls import record_kernel_calls

    assert backends.enabled()
    compiled = record_kernel_calls(monkeypatch)
    case = _layers.BY_ID[case_id]
    layer = case.build()
    x = torch.from_numpy(case.inputs(4, offset=offset))
    case.call(layer, x)  # builds the layer (and runs weight_norm's data-dependent init)
    params = [w.value for w in layer.trainable_weights]
    dy = torch.from_numpy(case.cotangent(4))
    with host_reads_of() as mode:
        xg = x.clone().requires_grad_(True)
        y = case.call(layer, xg)
        grads = torch.autograd.grad(y, [xg] + params, dy, allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert not mode.reads, f"{case_id}: host reads {sorted(set(mode.reads))}"
    assert not mode.copies, f"{case_id}: tensors made from Python data at {sorted(set(mode.copies))}"
    kernel = {"group": "native_group_norm", "instance": "native_batch_norm", "layer": "native_layer_norm",
              "batch-train": "native_batch_norm"}.get(case_id)
    if kernel is not None:  # the fast path served these
        by_compiled = {"_forward", "_backward"} <= set(compiled)
        assert kernel in mode.ops or by_compiled, f"{case_id}: the fast path did not run ({sorted(mode.ops)})"


#: Masked batch statistics (a Keras mask of (batch, time)): the layer in each
#: training form, and the ops with a mask; small and large inputs take the
#: shift's two forms (normlab.ops.samples.kept_samples), with an empty batch too.
#: Each entry makes a function of (x, mask).
MASKED = {
    "batch": lambda: _training(normlab.layers.BatchNormalization()),
    "ghost": lambda: _training(normlab.layers.BatchNormalization(virtual_batch_size=2)),
    "renorm": lambda: _training(normlab.layers.BatchNormalization(renorm=True)),
    "batch_norm": lambda: lambda x, m: normlab.ops.batch_norm(x, training=True, mask=m[..., None]),
    "moments": lambda: lambda x, m: normlab.ops.moments(x, [0, 1], mask=m[..., None])[1],
    "per-sample moments": lambda: lambda x, m: normlab.ops.moments(x, [1, 2], mask=m[..., None])[1],
}


def _training(layer):
    return lambda x, m: layer(x, training=True, mask=m)


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.parametrize("shape", [(4, 16, 8), (64, 64, 32), (0, 16, 8)], ids=["small", "large", "empty"])
@pytest.mark.parametrize("name", sorted(MASKED))
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_no_host_reads_with_masks(name, shape, host_reads_of):
    import torch

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=shape).astype("float32"), requires_grad=True)
    mask = torch.tensor(rng.random(shape[:2]) < 0.8)
    fn = MASKED[name]()
    fn(x.detach(), mask)  # builds a layer outside the guard
    with host_reads_of() as mode:
        y = fn(x, mask)
        torch.autograd.grad(y.sum(), [x], allow_unused=True)
    assert not mode.reads, f"{name}: host reads {sorted(set(mode.reads))}"
    assert not mode.copies, f"{name}: tensors made from Python data at {sorted(set(mode.copies))}"


#: The functional ops with tensor statistics and parameters (Python numbers
#: for their own arguments: epsilon, alpha, groups), on each path.
OPS = {
    "group_norm": lambda x, p: normlab.ops.group_norm(x, 4, gamma=p[0], beta=p[1]),
    "instance_norm": lambda x, p: normlab.ops.instance_norm(x, gamma=p[0], beta=p[1]),
    "layer_norm": lambda x, p: normlab.ops.layer_norm(x, -1, gamma=p[0], beta=p[1]),
    "layer_norm over (1, 3)": lambda x, p: normlab.ops.layer_norm(x, [1, 3]),
    "rms_norm": lambda x, p: normlab.ops.rms_norm(x, -1, gamma=p[0], beta=p[1]),
    "batch_norm training": lambda x, p: normlab.ops.batch_norm(x, training=True, gamma=p[0], beta=p[1]),
    "batch_norm inference": lambda x, p: normlab.ops.batch_norm(x, p[1], p[0], gamma=p[0], beta=p[1]),
    "filter_response_norm": lambda x, p: normlab.ops.filter_response_norm(x, gamma=p[0], beta=p[1]),
    "dynamic_tanh": lambda x, p: normlab.ops.dynamic_tanh(x, 0.5, gamma=p[0], beta=p[1]),
    "evo_norm_s0": lambda x, p: normlab.ops.evo_norm_s0(x, p[0], groups=4, gamma=p[0], beta=p[1]),
    "moments": lambda x, p: normlab.ops.moments(x, [0, 1, 2])[1],
    "normalize": lambda x, p: normlab.ops.normalize(x, p[1], p[0], gamma=p[0], beta=p[1]),
    "renorm": lambda x, p: normlab.ops.batch_renorm(x, p[1], p[0], gamma=p[0], beta=p[1],
                                                    clipping={"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0}),
    "ghost": lambda x, p: normlab.ops.ghost_batch_norm(x, 1, gamma=p[0], beta=p[1]),
}


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_ops_make_no_tensor_of_a_number(name, path, dtype, host_reads_of):
    import contextlib

    import torch

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(1e3, 2.0, (2, 4, 4, 8)), dtype=getattr(torch, dtype), requires_grad=True)
    params = [torch.tensor(rng.uniform(0.5, 1.5, 8).astype("float32")), torch.tensor(rng.normal(size=8).astype("float32"))]
    with backends.disabled() if path == "general" else contextlib.nullcontext(), host_reads_of() as mode:
        y = OPS[name](x, params)
        torch.autograd.grad(y.float().sum(), [x], allow_unused=True)
    assert not mode.reads, f"{name}: host reads {sorted(set(mode.reads))}"
    assert not mode.copies, f"{name}: tensors made from Python data at {sorted(set(mode.copies))}"


#: Synchronized statistics, with one replica: an identity sum (the counts and
#: averages over replicas take other lines than the unsynchronized ones).
SYNCHRONIZED = {
    "batch": lambda: normlab.layers.BatchNormalization(synchronized=True),
    "renorm": lambda: normlab.layers.BatchNormalization(synchronized=True, renorm=True),
    "ghost": lambda: normlab.layers.BatchNormalization(synchronized=True, virtual_batch_size=2),
    "evonorm_b0": lambda: normlab.layers.EvoNormB0(synchronized=True),
    "switchable": lambda: normlab.layers.SwitchableNormalization(synchronized=True),
}


@pytest.mark.skipif(BACKEND != "torch", reason="a torch dispatch mode")
@pytest.mark.parametrize("name,masked", [(name, False) for name in sorted(SYNCHRONIZED)]
                         + [(name, True) for name in ("batch", "renorm", "ghost")])
@pytest.mark.usefixtures("keras_on_cpu")  # CPU tensors, on a GPU machine too
def test_synchronized_statistics_make_no_tensor_of_a_number(name, masked, host_reads_of, monkeypatch):
    import torch

    monkeypatch.setattr(normlab.distributed, "replica_sum", lambda: (lambda t: t))
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(1e3, 2.0, (4, 5, 8)).astype("float32"), requires_grad=True)
    masks = {"mask": torch.tensor(rng.random((4, 5)) < 0.8)} if masked else {}
    layer = SYNCHRONIZED[name]()
    layer(x.detach(), training=True, **masks)
    params = [w.value for w in layer.trainable_weights]
    with host_reads_of() as mode:
        y = layer(x, training=True, **masks)
        torch.autograd.grad(y.sum(), [x] + params, allow_unused=True)
    assert not mode.reads, f"{name}: host reads {sorted(set(mode.reads))}"
    assert not mode.copies, f"{name}: tensors made from Python data at {sorted(set(mode.copies))}"


def _cuda() -> bool:
    if BACKEND != "torch":
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case_id", sorted(_layers.BY_ID))
def test_gpu_no_sync_in_forward_and_backward(case_id):
    """On a GPU, every layer's forward and backward with CUDA's sync debug
    mode set to error: a read on the host, or a blocking copy of host data
    to the device (what the dispatch mode above records on any machine),
    raises there, with the line that synchronized."""
    import torch

    case = _layers.BY_ID[case_id]
    layer = case.build()
    x = torch.from_numpy(case.inputs(4, offset=1e4)).cuda()
    case.call(layer, x)  # builds the layer (and runs weight_norm's data-dependent init)
    params = [w.value for w in layer.trainable_weights]
    dy = torch.from_numpy(case.cotangent(4)).cuda()
    xg = x.clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = case.call(layer, xg)
        torch.autograd.grad(y, [xg] + params, dy, allow_unused=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
