"""WeightNormalization's data-dependent initialization (Salimans & Kingma, 2016, section 3).

On its first call with data, the wrapper sets ``g`` and the wrapped layer's
bias so that the pre-activations ``t = x . v/||v||`` of that batch have zero
mean and unit variance per unit: ``g = 1 / sqrt(var(t) + 1e-10)``,
``bias = -mean(t) * g``. When that happens, and how, depends on where the
call runs; :class:`DataInit` (a mixin of
:class:`~normlab.layers.weight_norm.WeightNormalization`) makes the decision:

* Eager: initialize now, once, from this batch.
* A traced graph (``tf.function``, ``jit``, ``torch.compile``, an exporter):
  the graph decides at run time from ``initialized`` (a ``cond``; under
  torch, whose Keras ``cond`` is a Python ``if``, a select). A trace that
  is only saved (an export before any call) does not count as the first call.
* A batch with no spread to learn from, fewer than two values per unit
  (empty, or one sample through a Dense layer) or pre-activations constant
  over the batch (``model(np.zeros(...))`` to build a model), initializes
  nothing: the next batch does. A unit without spread in a batch that
  initializes the others keeps its ``g`` and bias. A training step on
  samples still marks the layer initialized (keeping ``g`` and the bias),
  so that no later call overwrites what it trains (``fit(batch_size=1)``).
* Where the updates cannot happen, or not alike on every replica, the layer
  warns and keeps ``g`` and the bias; a training call marks it initialized,
  so that no later call overwrites what it trained. Call the model once
  first, e.g. ``model(x_batch)``, there: under JAX's ``fit``, ``predict``
  and ``evaluate`` and in ``stateless_call`` on every backend (stateless
  calls, which drop updates of trainable weights); Keras' openvino ``predict`` (a graph built from placeholders);
  a replica of a ``tf.distribute`` strategy (``fit`` under
  ``MirroredStrategy``: each replica would take its own share's statistics,
  and the all-reduce that would make them the global batch's cannot run
  inside the graph's conditional). Under ``torch.distributed`` each process
  initializes from its own batch: call the model once before wrapping it in
  ``DistributedDataParallel``, which broadcasts rank 0's weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import keras
from keras import ops

from normlab import distributed
from normlab.layers.derived_kernel import (
    output_channel_axis,
)
from normlab.layers.scopes import (
    STATELESS_DISCARDS,
    bool_at_trace,
    concrete_bool,
    in_openvino_graph,
    in_stateless_call,
    torch_traced,
    trace_runs_now,
)
from normlab.ops.moments import moments
from normlab.ops.weights import weight_norm
from normlab.types import Tensor

#: Added to the variance in the data-dependent initialization (as TF Addons).
DATA_INIT_EPSILON = 1e-10

#: The fewest values per unit the initialization takes its statistics from.
MIN_VALUES_PER_UNIT = 2


class DataInit:
    """The data-dependent initialization of a weight-normalizing wrapper (see the module docstring)."""

    layer: keras.layers.Layer
    name: str
    g: keras.Variable
    initialized: keras.Variable
    _norm_axes: list[int]
    _is_rnn: bool
    _init_seen: bool  # the one-time warnings' flags are set by `_warn`

    def _kernel(self, fold: bool = False) -> keras.Variable:
        raise NotImplementedError

    def _bias(self) -> keras.Variable | None:
        raise NotImplementedError

    def _run(self, inputs: Tensor, kernel: Tensor, training: bool | None = None,
             pre_activation: bool = False, mask: Tensor | None = None, initial_state: Any = None) -> Any:
        raise NotImplementedError

    def _data_init_values(self, inputs: Tensor, mask: Tensor | None = None,
                          initial_state: Any = None) -> tuple[tuple[Tensor, ...], Any]:
        """``(g[, bias])`` giving the batch's pre-activations zero mean and
        unit variance (a unit without spread keeps its values), and whether
        the batch initializes: False where the shapes give fewer than two
        values per unit, else a tensor (enough values, and some unit varies).
        A sequence ``mask`` keeps padded steps out of the statistics, and an
        RNN starts from ``initial_state`` (None: its zero state)."""
        direction = weight_norm(self._kernel(), None, self._norm_axes)
        t = self._run(inputs, direction, training=False, pre_activation=True, mask=mask,
                      initial_state=initial_state)
        if self._is_rnn:
            t = keras.tree.flatten(t)[0]  # the output, without return_state's states
        steps = None
        if mask is not None and getattr(self.layer, "supports_masking", False) and len(t.shape) == len(mask.shape) + 1:
            steps = ops.expand_dims(mask, -1)  # a sequence's outputs (a Dense's, an RNN's return_sequences)
            if self._is_rnn and getattr(self.layer, "go_backwards", False):
                steps = ops.flip(steps, axis=1)  # its outputs come in the order it ran
        axis = output_channel_axis(self.layer) % len(t.shape)
        axes = [a for a in range(len(t.shape)) if a != axis]
        mean, var = moments(t, axes, mask=steps, keepdims=False)
        if torch_traced():  # torch.compile, torch.export: a symbolic size, counted in the graph (a tensor
            # made from it would specialize it to this trace's value)
            count: Any = ops.sum(ops.ones_like(ops.take(t, 0, axis=axis)))
        else:  # an int, or a tensor for a size unknown in a TF graph
            count = math.prod([ops.shape(t)[a] if t.shape[a] is None else t.shape[a] for a in axes])
        scale = ops.rsqrt(var + DATA_INIT_EPSILON)
        # A unit whose pre-activations do not vary over the batch (a constant
        # batch, such as model(np.zeros(...)) to build a model) has nothing to
        # scale to unit variance: it keeps its g and bias (1 / sqrt(1e-10) = 1e5
        # would multiply every later output).
        spread = var > 0
        g = ops.cast(scale, self.g.dtype)
        if self._is_rnn:  # one scale per unit, repeated over the gates (TF Addons)
            repeats = [int(self.g.shape[0]) // int(scale.shape[0])]
            g, spread_g = ops.tile(g, repeats), ops.tile(spread, repeats)
        else:
            spread_g = spread
        values = [ops.where(spread_g, g, self.g.value)]
        bias = self._bias()
        if bias is not None:
            values.append(ops.where(spread, ops.cast(-mean * scale, bias.dtype), bias.value))
        values = [ops.stop_gradient(v) for v in values]
        enough = count >= MIN_VALUES_PER_UNIT
        if enough is False:  # known from the shapes
            return tuple(values), enough
        # Initialized once some unit varies; a batch constant throughout leaves it to the next.
        return tuple(values), ops.logical_and(enough, ops.any(spread))

    def _warn(self, flag: str, message: str) -> None:
        """Warns once per ``flag``; not while torch traces (a graph break), so the next eager call does."""
        if not getattr(self, flag, False) and not torch_traced():
            setattr(self, flag, True)
            warnings.warn(f"{type(self).__name__} {self.name!r}: {message}", UserWarning, stacklevel=4)

    def _initialize(self, inputs: Tensor, training: bool | None, mask: Tensor | None = None,
                    initial_state: Any = None) -> None:
        stateless = in_stateless_call()
        if stateless or (keras.backend.backend() == "tensorflow" and distributed.replica_sum() is not None):
            # Updates of g and the bias would be discarded (while `initialized`,
            # non-trainable, would be kept) or differ by replica. Leave them as they
            # are; a training call marks the layer initialized, so that no later call
            # overwrites the weights it trained.
            if not self._init_seen:
                where, when = (
                    (STATELESS_DISCARDS, "eagerly")
                    if stateless else
                    ("in a replica of a tf.distribute strategy each replica would take its own share's "
                     "statistics (the all-reduce cannot run inside the graph's conditional)",
                     "under the strategy's scope, outside `fit`,"))
                self._warn(
                    "_warned",
                    f"{where}, so the data-dependent initialization of `g` and the bias cannot happen "
                    "here: they keep their current values, and a training step marks the layer "
                    f"initialized. Call the model once {when} first, e.g. `model(x_batch)`, or pass "
                    "data_init=False. (Ignore this if the weights were set or loaded already.)"
                )
            if training:
                self.initialized.assign(True)
            return
        if self._init_seen:
            # Known initialized (this process saw it, ran it or loaded the weights):
            # nothing to trace either, so compiled and exported graphs carry no
            # conditional (Keras' torch ops.cond is a Python `if` on a tensor).
            return
        done = concrete_bool(self.initialized)
        if done or (done is None and bool_at_trace(self.initialized)):  # initialized (a trace: before it)
            self._init_seen = True
            return
        if self._is_rnn:
            self._warn(
                "_warned_rnn",
                "data-dependent initialization of a recurrent layer (TF Addons' default; the "
                "paper advises against it for RNNs): `g` is set from this batch's outputs. "
                "Pass data_init=False to start from the unwrapped layer."
            )
        if done is False and in_openvino_graph(inputs):
            self._warn("_warned", "OpenVINO's `predict` compiles a graph from placeholder inputs, so the "
                       "data-dependent initialization of `g` and the bias cannot happen there: they keep "
                       "their current values. Call the model once eagerly first, e.g. `model(x_batch)`.")
            return
        first = keras.tree.flatten(inputs)[0]
        if first.shape[0] == 0:
            return  # known empty: no statistics, no training either
        bias = self._bias()
        targets = [self.g] + ([bias] if bias is not None else [])

        def chosen(values: tuple[Tensor, ...], enough: Any) -> tuple[Any, ...]:
            """The new values where the batch had enough values per unit, and that verdict as a tensor."""
            if isinstance(enough, bool):  # known from the shapes (torch.compile: a guard on its sizes)
                if enough:
                    return (*values, ops.convert_to_tensor(True))
                return (*[t.value for t in targets], ops.convert_to_tensor(False))
            return (*[ops.where(enough, v, t.value) for t, v in zip(targets, values)], enough)

        result: tuple[Any, ...]
        run_now = done is False or keras.backend.backend() == "torch"  # else computed inside the graph's cond
        values, enough = self._data_init_values(inputs, mask, initial_state) if run_now else ((), None)
        if enough is False and training is True:  # known from the shapes, and weights train from here on
            self._warn("_warned_small", "a training batch with one value per unit (one sample through a "
                       "Dense layer) has no spread to initialize `g` and the bias from: they keep their values, "
                       "and the layer is marked initialized, so that no later call overwrites what it trains.")
        if done is False:  # eager: no need to trace both branches
            if enough is False and training is not True:  # known from the shapes: wait for a batch with a spread
                return
            result = chosen(values, enough)
        elif keras.backend.backend() == "torch":  # torch.compile: Keras' torch cond is a Python `if`
            *new, verdict = chosen(values, enough)
            result = (*[ops.where(self.initialized, t.value, v) for t, v in zip(targets, new)],
                      ops.logical_or(self.initialized, verdict))
        else:  # inside a traced function (tf.function, jit): decide at run time
            current = (*[t.value for t in targets], ops.convert_to_tensor(True))
            result = ops.cond(ops.logical_and(self.initialized, True), lambda: current,
                              lambda: chosen(*self._data_init_values(inputs, mask, initial_state)))
        values, flag = tuple(result[:-1]), result[-1]
        if training is True:  # a training step on samples: no later call may overwrite what it trains
            flag = True if first.shape[0] is not None else ops.logical_or(flag, ops.shape(first)[0] > 0)
        for target, value in zip(targets, values):
            target.assign(value)
        self.initialized.assign(flag)
        # Settled where the flag is known True and the assignments run: eager, or a trace that runs as it is
        # traced (torch.compile). A trace that is only saved (tf.function, jit, an exporter) may never run,
        # and a verdict known only at run time may say "not yet": the next call looks again.
        known = flag is True or enough is True
        if done is False and not known:  # eager, a verdict from the values (a constant batch): read it
            known = concrete_bool(self.initialized) is True
        self._init_seen = known and (done is False or (done is None and trace_runs_now()))
