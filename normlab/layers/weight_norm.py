"""WeightNormalization wrapper (Salimans & Kingma, 2016).

A wrapper, not an activation norm: it reparametrizes the kernel of the
Dense or Conv layer it wraps, or the recurrent kernel of the SimpleRNN,
LSTM or GRU layer it wraps (TF Addons' choice for RNNs). The wrapped layer
keeps its own variables (the kernel variable holds the direction ``v``); at
every call the wrapper computes ``w = g * v / ||v||`` and runs the wrapped
layer with ``w`` in place of that kernel, so gradients reach ``g`` and
``v`` on every backend, in ``fit`` too.

Behaviour notes (details in the class docstring):

* The data-dependent initialization runs on the first call of any kind,
  training or inference, eager or traced (TF Addons' behaviour); never
  while Keras only infers shapes, never again once ``initialized`` is set
  (e.g. by loading saved weights). A graph traced before it (a
  ``tf.function``, an export) carries it; the next call looks again.
* Under JAX, ``fit``, ``predict`` and ``evaluate`` discard forward-pass
  updates of trainable weights: there the layer keeps ``g`` and the bias,
  warns once, and a training step marks it initialized so that no later
  call overwrites trained weights.
* ``remove()`` folds ``w`` into the wrapped layer's kernel variable and
  returns that plain Keras layer (TF Addons' ``remove``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from normlab.layers.base import check_training
from normlab.layers.data_init import DataInit
from normlab.layers.derived_kernel import (
    KERNEL_LAYERS,
    KernelL2Norm,
    SavedLora,
    call_with_kernel,
    check_wrapped_layer,
    full_precision,
    kernel_variable,
    missing_layer,
    substituted,
)
from normlab.layers.dtypes import check_float_policy
from normlab.layers.recurrent import RecurrentWrapper
from normlab.layers.scopes import concrete_bool, in_shape_inference
from normlab.ops.validate import ArgumentTypeError, error_message
from normlab.ops.weights import weight_norm
from normlab.types import Shape, Tensor

#: The RNN cells whose ``recurrent_kernel`` the wrapper can substitute: they
#: read it from that attribute at every step, on every backend.
RNN_CELLS = (keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)


def _check_rnn_cell(layer: keras.layers.RNN) -> None:
    if not isinstance(layer.cell, RNN_CELLS):
        raise ValueError(
            error_message(
                "layer",
                "a recurrent layer whose cell is a SimpleRNNCell, LSTMCell or GRUCell (or a "
                "subclass), whose `recurrent_kernel` is the kernel normalized",
                f"layer={type(layer).__name__}(name={layer.name!r}) with cell "
                f"{type(layer.cell).__name__}",
                "Wrap keras.layers.SimpleRNN, LSTM or GRU (one RNN per cell when stacking); for "
                "another cell, apply normlab.ops.weight_norm to its recurrent kernel in its call.",
            )
        )


@keras.saving.register_keras_serializable(package="normlab")
class WeightNormalization(DataInit, RecurrentWrapper, SavedLora, keras.layers.Wrapper):
    """Weight normalization: a layer's kernel split into a norm ``g`` and a direction ``v``.

    The wrapped layer's kernel variable holds the direction ``v``; the
    wrapper adds a per-output-unit norm ``g`` and, at every call, runs the
    layer with

        w = g * v / ||v||        (||v|| over all kernel axes but the output axis)

    For ``SimpleRNN``, ``LSTM`` and ``GRU`` (``is_rnn``) the normalized
    kernel is the cell's recurrent kernel, shape ``(units, gates * units)``,
    as in TF Addons: ``g`` has ``gates * units`` entries and ``||v||`` runs
    over the first axis; the input kernel is left as it is.

    With ``data_init=True`` the first call, training or inference (as in TF
    Addons), initializes ``g`` and the layer's bias from that batch so that
    the pre-activations ``t = x . v/||v||`` come out with zero mean and unit
    variance per unit: ``g = 1 / sqrt(var(t) + 1e-10)``,
    ``bias = -mean(t) * g``. With ``data_init=False``, ``g`` starts at
    ``||v||``, so the wrapped layer initially computes what it did unwrapped.
    Loaded weights carry ``initialized``, so loading never re-initializes.
    A batch with no spread to learn from (empty, or one value per unit: one
    sample through a Dense layer) leaves the initialization to the next.

    A drop-in for ``tfa.layers.WeightNormalization`` that works with Keras 3
    on TensorFlow, JAX and PyTorch and with ``.keras`` saving (the wrapped
    layer is serialized in the config). Differences from TF Addons: the
    initialization follows the paper, using the normalized direction and
    ignoring the initial bias (TF Addons took the statistics with the raw
    ``v`` and the initial bias, so its outputs had standard deviation
    ``1/||v||`` rather than 1). For RNNs (TF Addons' default too, though the
    paper advises against it) ``data_init=True`` sets ``g`` to one over the
    standard deviation of the layer's outputs computed with ``g = 1``, per
    unit and repeated over the gates, and leaves the bias alone, as TF Addons
    did; the layer warns. Prefer ``data_init=False`` for RNNs.

    On JAX, ``fit``, ``predict`` and ``evaluate`` run the forward pass
    statelessly (as ``stateless_call`` does on every backend) and discard
    updates of trainable weights, so the
    initialization cannot happen inside them: call the model once eagerly
    first, e.g. ``model(x_batch)``. Otherwise the layer warns and keeps ``g``
    and the bias as they are; ``fit`` also marks it initialized, so that no
    later call overwrites the trained weights. The same holds for ``predict``
    on Keras' openvino backend, which compiles its graph from placeholders,
    and for ``fit`` under a ``tf.distribute`` strategy with several replicas
    (each would initialize from its own share of the batch); there, call the
    model once under the strategy's scope first. Details:
    :mod:`normlab.layers.data_init`.

    A wrapped RNN also works inside ``keras.layers.Bidirectional``: the
    wrapper has its ``go_backwards``, ``stateful``, ``return_sequences``,
    ``return_state``, ``states`` and ``reset_state``, and its call takes
    ``initial_state`` (:mod:`normlab.layers.recurrent`).

    ``remove()`` writes ``w`` into the wrapped layer's kernel (recurrent
    kernel for RNNs) and returns the wrapped layer: a plain Keras layer with
    the wrapper's outputs.

    Args:
        layer: the layer to wrap: a ``keras.layers.Dense``, ``Conv1D``,
            ``Conv2D``, ``Conv3D``, ``SimpleRNN``, ``LSTM`` or ``GRU``
            instance (or subclass; ``keras.layers.RNN`` over one
            ``SimpleRNNCell``, ``LSTMCell`` or ``GRUCell`` too).
        data_init: initialize ``g`` and the bias from the first batch.
            Default True.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 8, 8, 3)).astype("float32")
        >>> conv = normlab.layers.WeightNormalization(keras.layers.Conv2D(4, 3))
        >>> y = keras.ops.convert_to_numpy(conv(x))      # first call: data-dependent init
        >>> bool(np.allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4))
        True
        >>> bool(np.allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-4))
        True
        >>> [w.name for w in conv.weights]
        ['g', 'initialized', 'kernel', 'bias']
        >>> plain = conv.remove()                        # w folded into the Conv2D's kernel
        >>> type(plain).__name__, bool(np.allclose(keras.ops.convert_to_numpy(plain(x)), y, atol=1e-4))
        ('Conv2D', True)

    Reference:
        Salimans & Kingma, "Weight Normalization: A Simple Reparameterization
        to Accelerate Training of Deep Neural Networks", NeurIPS 2016.
        https://arxiv.org/abs/1602.07868
    """

    def __init__(self, layer: keras.layers.Layer, data_init: bool = True, **kwargs: Any) -> None:
        check_wrapped_layer(type(self).__name__, layer, KERNEL_LAYERS + (keras.layers.RNN,))
        is_rnn = isinstance(layer, keras.layers.RNN)
        if is_rnn:
            _check_rnn_cell(layer)
        if not isinstance(data_init, (bool, np.bool_)):  # NumPy bools (from a config or an array) are bools
            raise ArgumentTypeError(
                error_message(
                    "data_init",
                    "a bool",
                    f"data_init={data_init!r} of type {type(data_init).__name__}",
                    "Pass data_init=True (initialize from the first batch) or False.",
                )
            )
        super().__init__(layer, **kwargs)
        check_float_policy(self)
        self.data_init = bool(data_init)
        self._is_rnn = is_rnn
        self._init_seen = False
        self.supports_masking = bool(getattr(layer, "supports_masking", False))  # as the wrapped layer

    @property
    def is_rnn(self) -> bool:
        """Whether the wrapped layer is a recurrent layer (its recurrent kernel is normalized)."""
        return self._is_rnn

    @property
    def kernel_norm_axes(self) -> list[int]:
        """The axes of ``v`` its norm is taken over, all but the last (TF Addons' name)."""
        return list(range(len(self.v.shape) - 1))

    @property
    def layer_depth(self) -> int:
        """The number of output units, ``g``'s size (TF Addons' name)."""
        return int(self.v.shape[-1])

    @property
    def v(self) -> keras.Variable:
        """The normalized variable ``v`` (TF Addons' name): the wrapped layer's
        kernel, or its cell's recurrent kernel for an RNN."""
        if not self.built:
            raise ValueError(
                error_message(
                    "v",
                    "a built wrapper (v is the wrapped layer's kernel once it has been called or built)",
                    f"the unbuilt {type(self).__name__} {self.name!r}",
                    "Call the wrapper on a batch, or build it with wrapper.build(input_shape), first.",
                )
            )
        return self._kernel()

    def _kernel(self, fold: bool = False) -> keras.Variable:
        """The normalized variable ``v``: the kernel, or the RNN cell's recurrent kernel."""
        if not self._is_rnn:
            return kernel_variable(self.layer, wrapper=self, fold=fold)
        cell = self.layer.cell
        kernel = cell.__dict__.get("recurrent_kernel")
        if not isinstance(kernel, keras.Variable) or len(kernel.shape) != 2:
            raise ValueError(
                error_message(
                    "layer",
                    "a built recurrent layer whose cell stores a 2-D `recurrent_kernel` variable",
                    f"layer={type(self.layer).__name__}(name={self.layer.name!r}) with cell "
                    f"{type(cell).__name__} and recurrent_kernel of type {type(kernel).__name__}"
                    f"{'' if kernel is None else ', shape ' + str(tuple(kernel.shape))}",
                    "Wrap keras.layers.SimpleRNN, LSTM or GRU, or a cell subclass that keeps "
                    "their `recurrent_kernel`.",
                )
            )
        return kernel

    def build(self, input_shape: Shape | None = None) -> None:
        super().build(input_shape)
        kernel = self._kernel()
        self._norm_axes = list(range(len(kernel.shape) - 1))
        units = int(kernel.shape[-1])
        self.g = self.add_weight(
            name="g",
            shape=(units,),
            initializer="ones" if self.data_init else KernelL2Norm(kernel, self._norm_axes),
            dtype=kernel.dtype,  # v's dtype, whatever the wrapper's own policy
            trainable=True,
        )
        self.initialized = self.add_weight(
            name="initialized",
            shape=(),
            dtype="bool",
            initializer="zeros" if self.data_init else "ones",
            trainable=False,
        )
        self._init_seen = not self.data_init

    def compute_output_shape(self, input_shape: Shape) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Any:
        return self.layer.compute_mask(inputs, mask)  # a Dense passes a sequence mask on, as unwrapped

    def _bias(self) -> keras.Variable | None:
        if self._is_rnn:  # TF Addons left an RNN's bias alone
            return None
        bias = self.layer.__dict__.get("bias")
        return bias if isinstance(bias, keras.Variable) else None

    def _run(
        self, inputs: Tensor, kernel: Tensor, training: bool | None = None, pre_activation: bool = False,
        mask: Tensor | None = None, initial_state: Any = None,
    ) -> Any:
        """The wrapped layer's output with ``kernel`` in place of ``v`` (an RNN
        skips ``mask``'s padding and starts from ``initial_state``)."""
        if not self._is_rnn:
            return call_with_kernel(self.layer, inputs, kernel, pre_activation=pre_activation, add_lora=True)
        cell = self.layer.cell
        with substituted(cell, recurrent_kernel=ops.cast(kernel, cell.compute_dtype)):
            return self.layer(inputs, initial_state=initial_state, training=training, mask=mask)

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None, initial_state: Any = None
    ) -> Any:
        training = check_training(training)
        if initial_state is not None and not self._is_rnn:
            raise ValueError(error_message(
                "initial_state", "None: only a wrapped recurrent layer (SimpleRNN, LSTM, GRU) takes a state",
                f"an initial_state for a {type(self).__name__} of {type(self.layer).__name__}",
                "Drop initial_state, or wrap a recurrent layer."))
        with full_precision(self.g):
            if self.data_init and not in_shape_inference():
                self._initialize(inputs, training, mask, initial_state)
            kernel = weight_norm(self._kernel(), self.g, self._norm_axes)
            outputs = self._run(inputs, kernel, training, mask=mask, initial_state=initial_state)
        return keras.tree.map_structure(lambda t: ops.cast(t, self.compute_dtype), outputs)

    def remove(self) -> keras.layers.Layer:
        """Folds ``w = g * v / ||v||`` into the wrapped layer and returns that layer.

        The wrapped layer's kernel variable (the cell's recurrent kernel for
        RNNs) is overwritten with ``w``, so the returned plain Keras layer
        gives the wrapper's outputs and saves as an ordinary layer. The
        wrapper keeps giving the same outputs while ``g > 0``.

        Returns:
            The wrapped layer.
        """
        if not self.built:
            raise ValueError(
                error_message(
                    "remove()",
                    "a built wrapper (g exists once it has been called or built)",
                    f"remove() on the unbuilt {type(self).__name__} {self.name!r}",
                    "Call the wrapper on a batch, or build it with wrapper.build(input_shape), "
                    "before remove().",
                )
            )
        if self.data_init and concrete_bool(self.initialized) is False:
            raise ValueError(
                error_message(
                    "remove()",
                    "an initialized wrapper (data_init=True initializes g and the bias on "
                    "the first call)",
                    f"remove() on {type(self).__name__} {self.name!r} before its initialization "
                    "(initialized=False, g still 1: not called yet, or only on batches with one value per unit)",
                    "Call the wrapper once on a batch of data (two or more samples for a Dense layer or "
                    "an RNN's last output) first, or use data_init=False.",
                )
            )
        with full_precision(self.g):
            kernel = self._kernel(fold=True)
            kernel.assign(ops.cast(weight_norm(kernel, self.g, self._norm_axes), kernel.dtype))
        return self.layer

    def load_own_variables(self, store: dict[str, Any]) -> None:
        super().load_own_variables(store)
        # Saved before its first call (initialized=False): initialize on the next one. (An
        # unbuilt layer, which copies and pickles load too, has no flag yet: build makes it.)
        if self.built:
            self._init_seen = concrete_bool(self.initialized) is not False

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_init": self.data_init}


def weight_normalization(
    layer: keras.layers.Layer | None = None, data_init: bool = True, **kwargs: Any
) -> WeightNormalization:
    """Wrapper, not an activation norm: weight-normalizes the Dense/Conv/RNN layer given as ``layer=``.

    Returns ``WeightNormalization(layer, data_init=data_init, **kwargs)``;
    the registry's factory for ``"weight_norm"``.
    """
    if layer is None:
        raise missing_layer("weight_norm", "a Dense, Conv, SimpleRNN, LSTM or GRU layer")
    return WeightNormalization(layer, data_init=data_init, **kwargs)
