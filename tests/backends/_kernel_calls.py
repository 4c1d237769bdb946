"""Recording which entry points of normlab's compiled CPU kernels ran, and through which autograd nodes."""

from __future__ import annotations


def record_kernel_calls(monkeypatch) -> list[str]:
    """Wraps ``normlab.backends.torch_cpu._forward`` and ``_backward`` for
    the test; returns the list their names are appended to, in call order."""
    from normlab.backends import torch_cpu

    calls: list[str] = []
    for name in ("_forward", "_backward"):
        original = getattr(torch_cpu, name)

        def recording(*args, _original=original, _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(torch_cpu, name, recording)
    return calls


def graph_nodes(y):
    """The names of the autograd nodes ``y`` was computed by."""
    names, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    return names
