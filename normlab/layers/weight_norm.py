"""WeightNormalization wrapper (Salimans & Kingma, 2016).

A wrapper, not an activation norm: it reparametrizes the kernel of the
Dense or Conv layer it wraps. The wrapped layer keeps its own variables
(the kernel variable holds the direction ``v``); at every call the wrapper
computes ``w = g * v / ||v||`` and runs the wrapped layer with ``w`` in
place of its kernel, so gradients reach ``g`` and ``v`` on every backend.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
from keras import ops

from normlab.ops.moments import moments
from normlab.ops.validate import error_message
from normlab.ops.weights import weight_norm

#: Added to the variance in the data-dependent initialization (as TF Addons).
DATA_INIT_EPSILON = 1e-10

_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def check_wrapped_layer(wrapper: str, layer, supported=_KERNEL_LAYERS) -> None:
    """Raises unless ``layer`` is an instance of one of the ``supported`` classes."""
    names = ", ".join(c.__name__ for c in supported)
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            error_message(
                "layer",
                f"a Keras layer instance to wrap ({names})",
                f"layer={layer!r} of type {type(layer).__name__}",
                f"Pass a layer instance, e.g. {wrapper}(keras.layers.Conv2D(16, 3)).",
            )
        )
    if not isinstance(layer, supported):
        raise ValueError(
            error_message(
                "layer",
                f"one of {names} (or a subclass), whose kernel's last axis is the output axis",
                f"layer={type(layer).__name__}(name={layer.name!r})",
                "Wrap a supported layer; for other layers apply the normlab.ops.weights "
                "functions to their kernel yourself.",
            )
        )


def kernel_variable(layer, attribute: str = "_kernel"):
    """The wrapped layer's raw kernel variable (built layers only)."""
    variable = layer.__dict__.get(attribute)
    if variable is None:
        raise ValueError(
            error_message(
                "layer",
                f"a built layer storing its kernel in `{attribute}` (Keras 3 Dense/Conv/Embedding)",
                f"layer={type(layer).__name__}(name={layer.name!r}) without `{attribute}`",
                "Wrap an unquantized keras.layers.Dense or Conv layer.",
            )
        )
    return variable


@contextlib.contextmanager
def substituted(layer, **attributes):
    """Temporarily replaces attributes of ``layer`` (e.g. its kernel) without tracking.

    Keras' Dense and Conv layers read their kernel from ``_kernel`` at call
    time; setting it to a tensor for the duration of one call runs the
    layer's own ``call`` (masking, dtype handling, activation) on a derived
    kernel. The attributes are restored even if the call raises.
    """
    saved = {name: layer.__dict__[name] for name in attributes}
    try:
        for name, value in attributes.items():
            object.__setattr__(layer, name, value)
        yield layer
    finally:
        for name, value in saved.items():
            object.__setattr__(layer, name, value)


def in_jax_stateless_call() -> bool:
    """True inside a JAX ``stateless_call`` (e.g. ``fit``), where updates of
    *trainable* variables made in the forward pass are discarded."""
    if keras.backend.backend() != "jax":
        return False
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


def full_precision():
    """A scope where variables read and assign in their own dtype, not the compute dtype.

    Under mixed precision Keras reads variables cast to float16 inside a
    layer's call; the wrappers compute their statistics from the float32
    variables, and on PyTorch an assignment made under that cast is lost.
    """
    from keras.src.backend import AutocastScope

    return AutocastScope(None)


def _concrete_bool(variable):
    """The variable's value as a Python bool, or None inside a traced function."""
    try:
        return bool(ops.convert_to_numpy(variable))
    except Exception:  # a symbolic value (tf.function, jax.jit): only known at run time
        return None


def output_channel_axis(layer) -> int:
    """The axis of ``layer``'s output that holds its output units."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return -1


@keras.saving.register_keras_serializable(package="normlab")
class WeightNormalization(keras.layers.Wrapper):
    """Weight normalization: a Dense/Conv kernel split into a norm ``g`` and a direction ``v``.

    The wrapped layer's kernel variable holds the direction ``v``; the
    wrapper adds a per-output-unit norm ``g`` and, at every call, runs the
    layer with

        w = g * v / ||v||        (||v|| over all kernel axes but the output axis)

    With ``data_init=True`` the first training call (``training=True``)
    initializes ``g`` and the layer's bias from that batch so that the
    pre-activations ``t = x . v/||v||`` come out with zero mean and unit
    variance per unit: ``g = 1 / sqrt(var(t) + 1e-10)``,
    ``bias = -mean(t) * g``. With ``data_init=False``, ``g`` starts at
    ``||v||``, so the wrapped layer initially computes what it did unwrapped.

    A drop-in for ``tfa.layers.WeightNormalization`` that works with Keras 3
    on TensorFlow, JAX and PyTorch and with ``.keras`` saving (the wrapped
    layer is serialized in the config). Differences from TF Addons: the
    data-dependent initialization runs on the first *training* call (TF
    Addons ran it on the first call of any kind) and follows the paper,
    using the normalized direction and ignoring the initial bias (TF Addons
    took the statistics with the raw ``v`` and the initial bias, so its
    outputs had standard deviation ``1/||v||`` rather than 1).

    On JAX, ``fit`` runs the forward pass statelessly and discards updates
    to trainable weights, so the data-dependent initialization cannot
    happen inside ``fit``: call the model once eagerly first, e.g.
    ``model(x_batch, training=True)`` (harmless on every backend). The layer
    warns if it sees an uninitialized training step under JAX ``fit``.

    Args:
        layer: the layer to wrap: a ``keras.layers.Dense``, ``Conv1D``,
            ``Conv2D`` or ``Conv3D`` instance (or subclass).
        data_init: initialize ``g`` and the bias from the first training
            batch. Default True.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 8, 8, 3)).astype("float32")
        >>> conv = normlab.layers.WeightNormalization(keras.layers.Conv2D(4, 3))
        >>> y = keras.ops.convert_to_numpy(conv(x, training=True))   # data-dependent init
        >>> bool(np.allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4))
        True
        >>> bool(np.allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-4))
        True
        >>> [w.name for w in conv.weights]
        ['g', 'initialized', 'kernel', 'bias']

    Reference:
        Salimans & Kingma, "Weight Normalization: A Simple Reparameterization
        to Accelerate Training of Deep Neural Networks", NeurIPS 2016.
        https://arxiv.org/abs/1602.07868
    """

    def __init__(self, layer, data_init=True, **kwargs):
        check_wrapped_layer(type(self).__name__, layer)
        if not isinstance(data_init, bool):
            raise TypeError(
                error_message(
                    "data_init",
                    "a bool",
                    f"data_init={data_init!r} of type {type(data_init).__name__}",
                    "Pass data_init=True (initialize from the first training batch) or False.",
                )
            )
        super().__init__(layer, **kwargs)
        self.data_init = data_init
        self._init_seen = False
        self._warned = False

    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = kernel_variable(self.layer)
        self._norm_axes = list(range(len(kernel.shape) - 1))
        units = int(kernel.shape[-1])
        self.g = self.add_weight(
            name="g",
            shape=(units,),
            initializer="ones" if self.data_init else _KernelNorm(kernel, self._norm_axes),
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

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def _bias(self):
        bias = self.layer.__dict__.get("bias")
        return bias if isinstance(bias, keras.Variable) else None

    def _data_init_values(self, inputs):
        """``(g, bias)`` giving this batch's pre-activations zero mean, unit variance."""
        direction = weight_norm(kernel_variable(self.layer), None, self._norm_axes)
        swap = {"_kernel": ops.cast(direction, self.layer.compute_dtype), "activation": None}
        bias = self._bias()
        if bias is not None:
            swap["bias"] = ops.zeros(bias.shape, self.layer.compute_dtype)
        with substituted(self.layer, **swap):
            t = self.layer(inputs)
        axis = output_channel_axis(self.layer) % len(t.shape)
        mean, var = moments(t, [a for a in range(len(t.shape)) if a != axis], keepdims=False)
        scale = ops.rsqrt(var + DATA_INIT_EPSILON)
        values = [ops.cast(scale, self.g.dtype)]
        if bias is not None:
            values.append(ops.cast(-mean * scale, bias.dtype))
        return tuple(ops.stop_gradient(v) for v in values)

    def _initialize(self, inputs):
        bias = self._bias()
        if in_jax_stateless_call():
            if not self._init_seen and not self._warned:
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__} {self.name!r}: under JAX, `fit` discards updates of "
                    "trainable weights made in the forward pass, so the data-dependent "
                    "initialization of `g` and the bias cannot happen here. Call the model once "
                    "eagerly first, e.g. `model(x_batch, training=True)`, or pass "
                    "data_init=False. (Ignore this if the weights were set or loaded already.)",
                    UserWarning,
                    stacklevel=3,
                )
        done = _concrete_bool(self.initialized)
        if done:  # eager and initialized: nothing to do
            self._init_seen = True
            return
        if done is False:  # eager: no need to trace both branches
            values = self._data_init_values(inputs)
        else:  # inside a traced function (fit): decide at run time
            current = (self.g.value,) + ((bias.value,) if bias is not None else ())
            values = ops.cond(
                ops.logical_and(self.initialized, True),
                lambda: current,
                lambda: self._data_init_values(inputs),
            )
        self.g.assign(values[0])
        if bias is not None:
            bias.assign(values[1])
        self.initialized.assign(True)
        if not in_jax_stateless_call():
            self._init_seen = True

    def call(self, inputs, training=None):
        with full_precision():
            if training and self.data_init:
                self._initialize(inputs)
            kernel = weight_norm(kernel_variable(self.layer), self.g, self._norm_axes)
            with substituted(self.layer, _kernel=ops.cast(kernel, self.layer.compute_dtype)):
                outputs = self.layer(inputs)
        return ops.cast(outputs, self.compute_dtype)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._init_seen = True

    def get_config(self):
        return {**super().get_config(), "data_init": self.data_init}


class _KernelNorm(keras.initializers.Initializer):
    """Initializer: the per-unit L2 norm of a kernel variable (``g = ||v||``)."""

    def __init__(self, kernel, axes):
        self.kernel = kernel
        self.axes = axes

    def __call__(self, shape, dtype=None):
        v = ops.cast(self.kernel, "float32")
        norm = ops.sqrt(ops.sum(ops.square(v), axis=self.axes))
        return ops.cast(ops.reshape(norm, shape), dtype or "float32")

    def get_config(self):  # never serialized: the layer's config holds data_init
        return {}


def _missing_layer(spec: str, what: str):
    return ValueError(
        error_message(
            "layer",
            f"the layer to modify ({what}); {spec!r} is not an activation norm placed "
            "after a layer, it changes the layer's kernel",
            "layer=None",
            f"Build it around the layer: normlab.get({spec!r}, layer=keras.layers.Conv2D(16, 3)).",
        )
    )


def weight_normalization(layer=None, data_init=True, **kwargs):
    """Wrapper, not an activation norm: weight-normalizes the Dense/Conv layer given as ``layer=``.

    Returns ``WeightNormalization(layer, data_init=data_init, **kwargs)``;
    the registry's factory for ``"weight_norm"``.
    """
    if layer is None:
        raise _missing_layer("weight_norm", "a Dense or Conv layer")
    return WeightNormalization(layer, data_init=data_init, **kwargs)
