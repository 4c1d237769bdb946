"""Running a Keras Dense/Conv layer with a derived kernel, the one mechanism
behind the kernel-reparametrizing layers (StdConv, WeightNormalization,
SpectralNormalization), and the wrappers' shared mechanics (which layers
they take; the scopes Keras runs them in: :mod:`normlab.layers.scopes`).

The layer's own ``call`` runs, with its kernel variable replaced for the
duration of the call by a tensor computed from it (standardized,
weight-normalized, spectrally normalized), so every layer option it
handles (padding, dilation, groups, causal padding) keeps working and
gradients flow into the variable on every backend. A LoRA-enabled layer's
low-rank update is not added again during the call: StdConv standardizes
the effective kernel (``kernel + update``); the wrappers, which normalize the
kernel variable itself, refuse a LoRA-enabled layer (:func:`kernel_variable`,
:class:`SavedLora`). The wrapped layer's activity regularizer sees the
final output, as in Keras. Two Keras/TensorFlow limits are handled here, once:

* TensorFlow's CPU convolution supports only channels-last (NHWC) data
  unless TensorFlow was built and run with oneDNN. Without a visible GPU, a
  channels-first convolution runs channels-last internally (a transpose in,
  one out): the same code path on every CPU, whatever its instruction set.
* Keras' TensorFlow ``ops.add`` takes a ``(1, C, 1, 1)`` bias for a
  channels-last one whenever the output's last axis also has ``C`` entries
  (Keras 3.15); the bias is therefore added here, with ``+``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from contextlib import AbstractContextManager
from typing import Any, Callable, Iterator, TypeVar

import keras
from keras import ops

from normlab import _compat
from normlab.ops.axes import check_real
from normlab.ops.validate import ArgumentTypeError, error_message
from normlab.types import DTypeLike, Shape, Tensor

_T = TypeVar("_T")

#: The layers whose kernel's last axis is the output axis.
KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def check_wrapped_layer(wrapper: str, layer: object, supported: tuple[type, ...] = KERNEL_LAYERS,
                        why: str = "whose kernel's last axis is the output axis") -> None:
    """Raises unless ``layer`` is an instance of one of the ``supported`` classes (``why``: what they share)."""
    names = ", ".join(c.__name__ for c in supported)
    if not isinstance(layer, keras.layers.Layer):
        raise ArgumentTypeError(
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
                f"one of {names} (or a subclass), {why}",
                f"layer={type(layer).__name__}(name={layer.name!r})",
                "Wrap a supported layer; for other layers apply the normlab.ops.weights "
                "functions to their kernel yourself.",
            )
        )


def missing_layer(spec: str, what: str) -> ValueError:
    """The error of a registry factory for a wrapper called without ``layer=``."""
    return ValueError(
        error_message(
            "layer",
            f"the layer to modify ({what}); {spec!r} is not an activation norm placed "
            "after a layer, it changes the layer's kernel",
            "layer=None",
            f"Build it around the layer: normlab.get({spec!r}, layer=keras.layers.Conv2D(16, 3)).",
        )
    )


_LORA_FIX = {
    "WeightNormalization": "Wrap the layer without LoRA (lora_rank=None, no enable_lora()); to fine-tune with "
                           "LoRA, fold the wrapper with remove() and enable LoRA on the layer it returns.",
    "SpectralNormalization": "Wrap the layer without LoRA (lora_rank=None, no enable_lora()); to fine-tune with "
                             "LoRA, assign normalized_kernel() to a plain layer's kernel and enable LoRA there.",
}


class SavedLora:
    """Mixin for the wrappers that normalize a kernel variable: a wrapped
    LoRA-enabled layer is refused (see :func:`kernel_variable`), except in a
    wrapper built from a config whose layer has a ``lora_rank`` (a
    ``.keras`` file saved by an earlier version, which accepted one), so
    that the file loads, with a warning. Keras saves such a layer's kernel
    with its LoRA update merged in and loads the LoRA factors as zeros: the
    loaded wrapper normalizes the merged kernel (the saved model added the
    update after the normalization, which no file keeps), and any later
    update is added after the normalization. A layer given LoRA after
    loading (``enable_lora()``) is refused as in a new wrapper.

    ``enable_lora()`` writes ``lora_rank`` into the layer's config too, so
    this version's config of a refused wrapper marks itself with
    ``"refuses_lora": True`` (only then; ``from_config`` removes it): a
    clone or a saved and loaded copy stays refused."""

    layer: keras.layers.Layer
    _from_config = False

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()  # type: ignore[misc]
        if getattr(self.layer, "lora_rank", None) and not self._from_config:
            config["refuses_lora"] = True
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Any:
        config = dict(config)
        refuses = config.pop("refuses_lora", False)
        wrapper = super().from_config(config, custom_objects)  # type: ignore[misc]
        # From an earlier version's config (not built yet, so lora_rank is the config's).
        wrapper._from_config = not refuses and bool(getattr(wrapper.layer, "lora_rank", None))
        return wrapper


def kernel_variable(layer: keras.layers.Layer, attribute: str = "_kernel", *,
                    wrapper: keras.layers.Layer | None = None, fold: bool = False) -> keras.Variable:
    """The layer's raw kernel variable (built layers). A LoRA-enabled layer
    is refused for ``wrapper`` unless ``fold`` (the kernel is read to be
    folded or returned, not run) or the wrapper was built from a config
    (:class:`SavedLora`: warned, the update then follows the normalization).
    A layer quantized to integer codes (int8, int4) is refused: its kernel is no ``v``."""
    if layer.__dict__.get("lora_enabled") and not fold:
        owner = "wrapper" if wrapper is None else type(wrapper).__name__
        if wrapper is None or not getattr(wrapper, "_from_config", False):
            raise ValueError(
                error_message(
                    "layer",
                    f"a layer without LoRA: the {owner} normalizes its kernel variable, and a LoRA-enabled "
                    "layer would add its low-rank update after that, unnormalized",
                    f"layer={type(layer).__name__}(name={layer.name!r}) with lora_enabled=True",
                    _LORA_FIX.get(owner, "Wrap the layer without LoRA (lora_rank=None, no enable_lora())."),
                )
            )
        if not wrapper.__dict__.get("_warned_lora"):
            object.__setattr__(wrapper, "_warned_lora", True)
            warnings.warn(
                f"{owner} {wrapper.name!r} (built from a config, e.g. a .keras file saved by an earlier "
                f"version) wraps the LoRA-enabled {type(layer).__name__} {layer.name!r}. Keras saved its kernel "
                "with the LoRA update merged in, which the wrapper now normalizes: the outputs differ from the "
                "saved model's, which added the update after the normalization; further LoRA training adds its "
                "update unnormalized. A new wrapper refuses this. " + _LORA_FIX.get(owner, ""),
                stacklevel=2,
            )
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
    if not keras.backend.is_float_dtype(variable.dtype):  # quantized to integer codes (float8 keeps a float kernel)
        owner = "wrapper" if wrapper is None else type(wrapper).__name__
        raise ValueError(
            error_message(
                "layer",
                f"a layer with a float kernel: the {owner} normalizes its kernel variable, and integer codes "
                "normalized are no kernel at all",
                f"layer={type(layer).__name__}(name={layer.name!r}) with quantization_mode="
                f"{getattr(layer, 'quantization_mode', None)!r} and a kernel of dtype {variable.dtype} "
                "(model.quantize() quantizes the layers inside wrappers too)",
                "Fold the wrapper first (WeightNormalization.remove(); for SpectralNormalization assign "
                "normalized_kernel() to a plain layer's kernel) and quantize the plain layer, or leave the "
                "wrapped layer out: model.quantize(mode, filters=lambda layer: layer is not wrapper.layer).",
            )
        )
    return variable


_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def exclusive(layer: Any) -> AbstractContextManager[Any]:
    """A block in which no other thread substitutes attributes of ``layer``.

    Threads that call one wrapper (a model served from a thread pool) share
    its layer: without it, one thread's kernel, bias or activation was seen,
    and restored last, by another (outputs wrong, and the layer left with a
    stale kernel). Re-entrant; no lock while ``torch.compile`` traces (one
    thread, and a lock would break its graph).
    """
    if keras.backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
    with _LOCKS_LOCK:
        lock = _LOCKS.get(layer)
        if lock is None:
            lock = _LOCKS[layer] = threading.RLock()
    return lock


@contextlib.contextmanager
def substituted(layer: _T, **attributes: Any) -> Iterator[_T]:
    """Temporarily replaces attributes of ``layer`` (e.g. its kernel) without tracking.

    Setting a Keras layer attribute to a tensor or None through ``setattr``
    would track or untrack it as a variable; this bypasses that for the
    duration of the block and restores the originals even if it raises.
    The block is :func:`exclusive` to the calling thread.
    """
    with exclusive(layer):
        saved = {name: layer.__dict__[name] for name in attributes}
        try:
            for name, value in attributes.items():
                object.__setattr__(layer, name, value)
            yield layer
        finally:
            for name, value in saved.items():
                object.__setattr__(layer, name, value)


@functools.lru_cache(maxsize=None)
def _tensorflow_has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def runs_channels_last(layer: keras.layers.Layer) -> bool:
    """Whether a channels-first convolution of ``layer`` runs channels-last internally.

    True on TensorFlow without a visible GPU: its CPU kernels reject NCHW
    unless oneDNN is enabled, which depends on the CPU and on
    ``TF_ENABLE_ONEDNN_OPTS``; taking the channels-last path on every CPU
    keeps results and support identical across machines.
    """
    return (
        getattr(layer, "data_format", None) == "channels_first"
        and keras.backend.backend() == "tensorflow"
        and not _tensorflow_has_gpu()
    )


def _bias_shape(layer: keras.layers.Layer, rank: int) -> tuple[int, ...]:
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return (1, -1) + (1,) * (rank - 2)
    return (1,) * (rank - 1) + (-1,)


def call_with_kernel(
    layer: keras.layers.Layer, inputs: Tensor, kernel: Tensor, *, call: Callable[[Tensor], Tensor] | None = None,
    attribute: str = "_kernel", pre_activation: bool = False, add_lora: bool = False,
) -> Tensor:
    """Runs ``layer`` on ``inputs`` with ``kernel`` in place of its kernel variable.

    Args:
        layer: a built Keras Dense/Conv layer (a transposed or depthwise
            convolution with ``attribute="kernel"``, an Embedding with
            ``attribute="_embeddings"``).
        inputs: the layer's input.
        kernel: the tensor to use as the kernel (cast to the layer's
            compute dtype here).
        call: the function that runs the layer; default ``layer`` itself
            (its ``__call__``). A subclass passes ``super().call``.
        attribute: the attribute holding the kernel. Default ``"_kernel"``.
        pre_activation: return the output before the bias and the
            activation. Default False.
        add_lora: add a LoRA-enabled layer's low-rank update to ``kernel``,
            as its own call does (a loaded wrapper, see :class:`SavedLora`).
            Default False: ``kernel`` already holds it.

    Returns:
        The layer's output, bias and activation included unless ``pre_activation``.
    """
    for tensor in keras.tree.flatten(inputs):  # a cast inside the layer would drop the imaginary part
        if hasattr(tensor, "dtype"):
            check_real(tensor, "inputs")
    regularizer = layer.activity_regularizer if call is None else None  # (a subclass's own __call__ adds it)
    call = call or layer
    swap = {attribute: ops.cast(kernel, layer.compute_dtype), "activity_regularizer": None}
    if layer.__dict__.get("lora_enabled") and not add_lora:  # `kernel` already holds the update (StdConv)
        swap["lora_enabled"] = False
    if attribute == "_embeddings":  # no bias, no layout
        with substituted(layer, **swap):
            return _regularized(layer, call(inputs), regularizer)
    transpose = runs_channels_last(layer)
    if transpose:  # (the channels-first spec checked first: a wrong channel count ran as a grouped conv)
        _compat.check_input_spec(layer, inputs)
        inputs = ops.moveaxis(inputs, 1, -1)
        swap.update(data_format="channels_last", _input_spec=None)
    with exclusive(layer):  # (the bias and activation read as no other thread has substituted them)
        bias = layer.__dict__.get("bias")
        activation = layer.__dict__.get("activation")
        with substituted(layer, **swap, bias=None, use_bias=False, activation=None):
            outputs = call(inputs)
    if transpose:
        outputs = ops.moveaxis(outputs, -1, 1)
    if pre_activation:
        return outputs
    if bias is not None:
        outputs = outputs + ops.reshape(ops.cast(bias, outputs.dtype), _bias_shape(layer, len(outputs.shape)))
    if activation is not None:
        outputs = activation(outputs)
    return _regularized(layer, outputs, regularizer)


def _regularized(layer: keras.layers.Layer, outputs: Tensor, regularizer: Any) -> Tensor:
    """``outputs``, with ``regularizer``'s loss on them added to ``layer`` as Keras' ``__call__`` adds it (divided
    by the batch size): on the output, bias and activation included, not on the kernel product."""
    if regularizer is not None:
        loss = regularizer(outputs)
        layer.add_loss(ops.divide_no_nan(loss, ops.cast(ops.shape(outputs)[0], loss.dtype)) if outputs.shape else loss)
    return outputs


def full_precision(variable: keras.Variable) -> AbstractContextManager[Any]:
    """A scope where float variables read and assign in the own dtype of
    ``variable`` (the kernel a wrapper normalizes, or ``g`` or ``u``, made in
    the kernel's dtype whatever the wrapper's policy), not the compute dtype.

    Under mixed precision Keras reads variables cast to float16 inside a
    layer's call; the wrappers compute their statistics from the float32
    variables, and on PyTorch an assignment made under a cast is lost (it
    lands in the cast copy). Keras' scope of None, "no cast", reports every
    float variable's dtype as float32 on TensorFlow: float64 kernels were
    read and normalized in float32.
    """
    return _compat.autocast_scope(_compat.own_dtype(variable))


def output_channel_axis(layer: keras.layers.Layer) -> int:
    """The axis of ``layer``'s output that holds its output units."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return -1


class KernelL2Norm(keras.initializers.Initializer):
    """Initializer: the per-unit L2 norm of a kernel variable over ``axes``
    (``g = ||v||``, WeightNormalization without data_init)."""

    def __init__(self, kernel: keras.Variable, axes: list[int]) -> None:
        self.kernel = kernel
        self.axes = axes

    def __call__(self, shape: Shape, dtype: DTypeLike = None) -> Tensor:
        dtype = dtype or "float32"
        v = ops.cast(self.kernel, "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32")
        norm = ops.sqrt(ops.sum(v * v, axis=self.axes))
        return ops.cast(ops.reshape(norm, shape), dtype)

    def get_config(self) -> dict[str, Any]:  # never serialized: the layer's config rebuilds it
        return {}
