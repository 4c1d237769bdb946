"""``backends.saved_for_backward``: values read from state that the same call
then updates in place must reach the backward as they were read.

torch.compile's partitioner (2.13) may recompute a cheap value in the
backward from the forward's inputs, after the forward's in-place update has
written them (pytorch/pytorch#197039): batch renorm's gradient was off by
0.31 of 1.41 at batch 4. The compiled-layer tests cover the layer; these
cover the helper on the smallest function that shows the failure.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from normlab import backends


def _scaled(state, *, by):
    return state * by + 1.0


def test_a_plain_call_outside_torch_compile():
    state = keras.ops.convert_to_tensor(np.arange(3, dtype="float32"))
    got = backends.saved_for_backward(functools.partial(_scaled, by=2.0), state)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), [1.0, 3.0, 5.0])


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile's partitioner")
@pytest.mark.usefixtures("keras_on_cpu")
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_keeps_the_value_read_before_the_update(dynamic):
    import torch

    def step(x, state):
        r = backends.saved_for_backward(functools.partial(_scaled, by=2.0), state)
        y = x * r  # the backward needs r: dx = dy * r
        with torch.no_grad():
            state.copy_(state * 0.5 + 3.0)  # a moving average's update, in place
        return y

    def gradient(fn):
        state = torch.tensor([0.5, 1.0, 2.0, 4.0])
        x = torch.linspace(-1.0, 1.0, 8).reshape(2, 4).requires_grad_(True)
        y = fn(x, state)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        return dx, state

    torch._dynamo.reset()
    eager_dx, eager_state = gradient(step)
    compiled_dx, compiled_state = gradient(torch.compile(step, fullgraph=True, dynamic=dynamic))
    torch.testing.assert_close(compiled_state, eager_state)  # the update happened
    torch.testing.assert_close(compiled_dx, eager_dx, rtol=0, atol=1e-6)  # 2 * 0.5 + 1, not 2 * 3.25 + 1
    np.testing.assert_allclose(eager_dx[0].numpy(), [2.0, 3.0, 5.0, 9.0])
