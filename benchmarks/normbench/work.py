"""Work per call, counted rather than timed: deterministic on one machine, blind to load.

For each timed function (a :class:`.runners.Call`), the number of kernels
it runs and the bytes they read and write, estimated op by op from the
tensors' sizes (each op reads its inputs and writes its outputs once;
views and metadata ops move nothing):

* torch: every ATen op dispatched during one call, backward included,
  seen through a ``TorchDispatchMode`` (the fast paths stay on: they
  decline only under ``torch.compile``/export/TorchScript tracing).
* JAX: the compiled XLA module's top-level instructions (fusions, custom
  calls, copies) from its optimized HLO; XLA's own ``cost_analysis()``
  (``bytes accessed``, ``flops``) is recorded beside it.
* TensorFlow: ``tf.function``: the ops of the traced graph (static
  shapes); under XLA the optimized HLO as for JAX.

Where a graph branches (``tf.cond``/``lax.cond``: an exact second pass
that only unusual inputs take), ``bytes``/``ops`` count the cheapest
branch and ``bytes_max`` the dearest, so both bounds are kept.

Counts are estimates of memory traffic, not measurements: caches, fusion
inside a kernel and the allocator are not seen. Their use is comparing
implementations and commits without a quiet machine.
"""

from __future__ import annotations

import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
               "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
HLO_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
            "replica-id", "iota"}
CONTROL = ("conditional", "while", "call")
TF_FREE = {"Placeholder", "Const", "NoOp", "Identity", "IdentityN", "ReadVariableOp", "Reshape", "Shape",
           "ShapeN", "Size", "Rank", "StopGradient", "Squeeze", "ExpandDims", "_Arg", "_Retval",
           "VarHandleOp", "PreventGradient", "BroadcastGradientArgs"}


def _cost(ops, lo, hi=None):
    return {"ops": ops, "bytes": lo, "bytes_max": lo if hi is None else hi}


# ---------------------------------------------------------------------------
# XLA: optimized HLO text (JAX and TensorFlow's jit_compile).


def hlo_shape_bytes(shape):
    """Bytes of an HLO shape such as ``f32[8,56,56,256]{3,2,1,0}`` or a tuple of them."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES.get(dtype, 4)
    return total


def _split_instruction(line):
    """``(name, shape, opcode, operands, attributes)`` of one HLO instruction line, or None."""
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):  # a tuple shape
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[:i + 1], rest[i + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    depth, i = 0, op.end() - 1
    for i in range(op.end() - 1, len(rest)):
        depth += rest[i] == "("
        depth -= rest[i] == ")"
        if depth == 0:
            break
    return m.group(1), shape, op.group(1), rest[op.end():i], rest[i + 1:]


def parse_hlo(text):
    """``{computation: [(name, shape, opcode, operands, attributes)], ...}`` and the entry's name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        head = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(2)
            computations[current] = []
            entry = current if head.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            parts = _split_instruction(line)
            if parts:
                computations[current].append(parts)
    return computations, entry


def hlo_cost(text):
    """Ops and bytes of an optimized HLO module: its entry's instructions, each reading
    its operands and writing its result; conditionals as their cheapest/dearest branch,
    while loops and calls by their body once."""
    computations, entry = parse_hlo(text)

    def cost(name, seen=()):
        shapes = {n: s for n, s, *_ in computations.get(name, [])}
        ops = lo = hi = 0
        for n, shape, opcode, operands, attrs in computations.get(name, []):
            if opcode in HLO_FREE:
                continue
            if opcode not in CONTROL:  # control flow passes its buffers on: its bodies do the work
                moved = hlo_shape_bytes(shape) + sum(hlo_shape_bytes(shapes.get(o, ""))
                                                     for o in re.findall(r"%([\w.\-]+)", operands))
                ops, lo, hi = ops + 1, lo + moved, hi + moved
            called = re.findall(r"(?:branch_computations=\{|true_computation=|false_computation=|body=|"
                                r"to_apply=|, )%([\w.\-]+)", attrs) if opcode in CONTROL else []
            called = [c for c in called if c in computations and c not in seen]
            if opcode == "conditional" and called:
                branches = [cost(c, seen + (name,)) for c in called]
                cheap = min(branches, key=lambda b: b["bytes"])
                ops, lo, hi = ops + cheap["ops"], lo + cheap["bytes"], hi + max(b["bytes_max"] for b in branches)
            else:
                for c in called:
                    sub = cost(c, seen + (name,))
                    ops, lo, hi = ops + sub["ops"], lo + sub["bytes"], hi + sub["bytes_max"]
        return _cost(ops, lo, hi)

    return cost(entry) if entry else _cost(0, 0)


# ---------------------------------------------------------------------------
# One backend's counter for a Call.


def count_torch(call):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def nbytes(t):
        return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())

    class Counter(TorchDispatchMode):
        ops = moved = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            storages = {t.untyped_storage().data_ptr() for t in inputs}
            view = func.is_view or (not func._schema.is_mutable and outputs
                                    and all(t.untyped_storage().data_ptr() in storages for t in outputs))
            if outputs and not view:
                self.ops += 1
                self.moved += sum(nbytes(t) for t in inputs + outputs)
            return out

    with Counter() as counter:
        call()
    return _cost(counter.ops, counter.moved)


def count_jax(call):
    with call.context() if call.context else _null():
        compiled = call.fn.lower(*call.args).compile()
    out = hlo_cost(compiled.as_text())
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    if analysis:
        out["xla_bytes_accessed"] = analysis.get("bytes accessed")
        out["xla_flops"] = analysis.get("flops")
    return out


def _tf_graph_cost(graph, seen=()):
    ops = lo = hi = 0

    def size(t):
        dims = t.shape.as_list() if t.shape.rank is not None else None
        if dims is None or any(d is None for d in dims):
            return 0
        n = 1
        for d in dims:
            n *= d
        return n * (t.dtype.size if t.dtype.is_numpy_compatible else 4)

    def sub_graph(name):
        fn = graph._get_function(name)
        return getattr(fn, "graph", None) if fn is not None else None

    for op in graph.get_operations():
        if op.type in TF_FREE:
            continue
        branches = [op.get_attr(a).name for a in ("then_branch", "else_branch", "f", "body")
                    if a in op.node_def.attr]
        if op.type in ("Case", "StatelessCase"):
            branches = [f.name for f in op.get_attr("branches")]
        subs = [g for g in (sub_graph(b) for b in branches if b not in seen) if g is not None]
        if subs:
            costs = [_tf_graph_cost(g, seen + tuple(branches)) for g in subs]
            cheap = min(costs, key=lambda c: c["bytes"])
            ops, lo, hi = ops + cheap["ops"], lo + cheap["bytes"], hi + max(c["bytes_max"] for c in costs)
            continue
        moved = sum(size(t) for t in list(op.inputs) + list(op.outputs))
        ops, lo, hi = ops + 1, lo + moved, hi + moved
    return _cost(ops, lo, hi)


def count_tensorflow(call, jit_compile):
    with call.context() if call.context else _null():
        if jit_compile:
            return hlo_cost(call.fn.experimental_get_compiler_ir(*call.args)(stage="optimized_hlo"))
        return _tf_graph_cost(call.fn.get_concrete_function(*call.args).graph)


def _null():
    import contextlib

    return contextlib.nullcontext()


def count(runner, call):
    """The work of one call of ``call`` on ``runner``'s backend: ``{"ops", "bytes", "bytes_max", ...}``."""
    if runner.name == "torch":
        return count_torch(call)
    if runner.name == "jax":
        return count_jax(call)
    return count_tensorflow(call, runner.jit_compile)
