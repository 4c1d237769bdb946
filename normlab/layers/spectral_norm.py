"""SpectralNormalization wrapper (Miyato et al., 2018).

A wrapper, not an activation norm: it divides the kernel of the Dense,
Conv or Embedding layer it wraps by an estimate of the kernel's largest
singular value, kept up to date by power iteration with a persistent
vector ``u``. By default the kernel is normalized on the fly at every call
(the paper, PyTorch); ``in_place=True`` is Keras' and TF Addons' behaviour
(the stored kernel overwritten in training steps, used as stored otherwise).
Both are pinned by tests; the class docstring compares them.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import keras
import numpy as np
from keras import initializers, ops

from normlab.layers.base import check_training
from normlab.layers.derived_kernel import (
    KERNEL_LAYERS,
    SavedLora,
    call_with_kernel,
    check_wrapped_layer,
    full_precision,
    kernel_variable,
    missing_layer,
)
from normlab.layers.dtypes import check_float_policy
from normlab.layers.scopes import STATELESS_DISCARDS, in_stateless_call
from normlab.ops.validate import ArgumentTypeError, error_message
from normlab.ops.weights import spectral_norm
from normlab.types import Shape, Tensor

#: Layers that keep their kernel in ``kernel`` (Keras' Dense and Conv keep it in ``_kernel``).
_PLAIN_KERNEL_LAYERS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
                        keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SPECTRAL_LAYERS = KERNEL_LAYERS + _PLAIN_KERNEL_LAYERS + (keras.layers.Embedding,)


def _kernel_attribute(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Embedding):
        return "_embeddings"
    return "_kernel" if isinstance(layer, KERNEL_LAYERS) else "kernel"


def _check_power_iterations(power_iterations: object) -> int:
    """``power_iterations`` as an int >= 1."""
    if (
        isinstance(power_iterations, bool)
        or not isinstance(power_iterations, numbers.Integral)
        or power_iterations < 1
    ):
        raise ValueError(
            error_message(
                "power_iterations",
                "an integer >= 1 (power-iteration steps per training call)",
                f"power_iterations={power_iterations!r}",
                "Use power_iterations=1, the paper's choice.",
            )
        )
    return int(power_iterations)


@keras.saving.register_keras_serializable(package="normlab")
class SpectralNormalization(SavedLora, keras.layers.Wrapper):
    """Spectral normalization: the wrapped kernel divided by its largest singular value.

    The kernel ``W`` is seen as a ``(fan_in, out)`` matrix. A persistent,
    non-trainable vector ``u`` (shape ``(1, out)``) tracks its top right
    singular vector; in training each call refines it by
    ``power_iterations`` steps of

        v = unit(u W^T),   u = unit(v W),   sigma = v W u^T

    In inference ``u`` is not updated and ``sigma = |W unit(u)|``. Training
    calls give the same outputs and the same updated ``u`` in both modes
    below, equal to Keras'; the modes differ in what is stored, in what
    inference uses and in the gradient.

    * ``in_place=False`` (default; the paper, PyTorch's ``spectral_norm``):
      every call, training or inference, runs the layer with ``W / sigma``,
      the gradient flowing through ``sigma`` (``u`` and ``v`` held constant).
      The kernel variable keeps the unnormalized ``W``. Works the same under
      JAX ``fit``.
    * ``in_place=True`` (``keras.layers.SpectralNormalization``,
      ``tfa.layers.SpectralNormalization``): each training call *overwrites*
      the kernel variable with ``W / sigma``; every call then runs the layer
      with the kernel as stored, so inference before any training step uses
      the raw kernel, and no gradient flows through ``sigma``. TF Addons
      models are loaded in this mode (``normlab.compat.tfa``), so they give
      the outputs they gave. Under JAX ``fit``, which discards updates of
      trainable weights made in the forward pass, the stored kernel never
      gets normalized (Keras' layer has the same limit); the layer warns.

    A 2x2 convolution with a kernel of ones on an image of ones (Keras'
    own test): the kernel's largest singular value is 2, the unnormalized
    output 4. Before any training step the default gives 2.0 in inference
    and ``in_place=True`` gives 4.0, as Keras does; training calls give 2.0
    in both, and afterwards inference gives 2.0 in both.

    Args:
        layer: the layer to wrap: a ``keras.layers.Dense``, ``Conv1D``,
            ``Conv2D``, ``Conv3D``, ``Conv1DTranspose``, ``Conv2DTranspose``,
            ``Conv3DTranspose``, ``DepthwiseConv1D``, ``DepthwiseConv2D`` or
            ``Embedding`` instance (or subclass); its kernel's matrix has
            every axis but the last flattened, as in Keras' wrapper.
        power_iterations: power-iteration steps per training call, >= 1.
            Default 1 (the estimate improves across steps since ``u`` persists).
        in_place: overwrite the kernel in training steps and run with the
            stored kernel, as Keras and TF Addons do, instead of normalizing
            it on the fly at every call. Default False.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> import keras, numpy as np, normlab
        >>> images = np.ones((1, 2, 2, 1), "float32")
        >>> def conv():
        ...     return keras.layers.Conv2D(1, 2, kernel_initializer="ones", use_bias=False)
        >>> def value(x):
        ...     return round(float(keras.ops.convert_to_numpy(x).max()), 4)
        >>> default = normlab.layers.SpectralNormalization(conv())
        >>> keras_like = normlab.layers.SpectralNormalization(conv(), in_place=True)
        >>> [value(sn(images)) for sn in (default, keras_like)]                  # before training
        [2.0, 4.0]
        >>> [value(sn(images, training=True)) for sn in (default, keras_like)]
        [2.0, 2.0]
        >>> [value(sn.layer.kernel) for sn in (default, keras_like)]             # stored kernel
        [1.0, 0.5]
        >>> kernel = keras.initializers.GlorotUniform(seed=37)  # (its top two singular values apart)
        >>> dense = normlab.layers.SpectralNormalization(keras.layers.Dense(8, kernel_initializer=kernel))
        >>> x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
        >>> for _ in range(100):                         # u converges across training calls
        ...     y = dense(x, training=True)
        >>> w = keras.ops.convert_to_numpy(dense.normalized_kernel())
        >>> round(float(np.linalg.svd(w, compute_uv=False)[0]), 3)
        1.0
        >>> [v.name for v in dense.weights]                 # Keras' order
        ['kernel', 'vector_u', 'bias']

    Reference:
        Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
        Generative Adversarial Networks", ICLR 2018. https://arxiv.org/abs/1802.05957
    """

    def __init__(
        self, layer: keras.layers.Layer, power_iterations: int = 1, in_place: bool = False, **kwargs: Any
    ) -> None:
        check_wrapped_layer(type(self).__name__, layer, _SPECTRAL_LAYERS, "with a kernel: its matrix is the kernel "
                            "with every axis but the last flattened, as in Keras' wrapper")
        iterations = _check_power_iterations(power_iterations)
        if not isinstance(in_place, (bool, np.bool_)):  # NumPy bools (from a config or an array) are bools
            raise ArgumentTypeError(
                error_message(
                    "in_place",
                    "a bool",
                    f"in_place={in_place!r} of type {type(in_place).__name__}",
                    "Pass in_place=False (normalize on the fly) or True (Keras/TF Addons behaviour).",
                )
            )
        super().__init__(layer, **kwargs)
        check_float_policy(self)
        self.power_iterations = iterations
        self.in_place = bool(in_place)
        self._warned = False
        self.supports_masking = bool(getattr(layer, "supports_masking", False))  # as the wrapped layer

    def build(self, input_shape: Shape | None = None) -> None:
        super().build(input_shape)
        kernel = kernel_variable(self.layer, _kernel_attribute(self.layer), wrapper=self)
        # Tracked here too, before u, as Keras' layer does: the weights come in its order
        # (kernel, vector_u, then the wrapped layer's others), so `set_weights` and
        # `.weights.h5` files move between the two.
        self.kernel = kernel
        self.kernel_shape = tuple(kernel.shape)  # as Keras' layer
        self.vector_u = self.add_weight(
            name="vector_u",
            shape=(1, int(kernel.shape[-1])),
            initializer=initializers.TruncatedNormal(stddev=0.02),
            dtype=kernel.dtype,  # the kernel's, whatever the wrapper's own policy (as Keras)
            trainable=False,
        )

    def compute_output_shape(self, input_shape: Shape) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Any:
        return self.layer.compute_mask(inputs, mask)  # as unwrapped: a Dense passes it on, an Embedding makes it

    def load_own_variables(self, store: Any) -> None:
        if len(store.keys()) == 1:  # saved by an earlier normlab, which tracked u alone here
            self.vector_u.assign(store["0"])
            return
        super().load_own_variables(store)

    @property
    def w(self) -> keras.Variable:
        """The wrapped layer's kernel variable (TF Addons' name; also ``kernel``)."""
        return self._built_weights()[0]

    @property
    def u(self) -> keras.Variable:
        """The power-iteration vector ``vector_u`` (TF Addons' name; its ``sn_u``)."""
        return self._built_weights()[1]

    @property
    def w_shape(self) -> list[int]:
        """The kernel's shape (TF Addons' name; Keras' ``kernel_shape``)."""
        return list(self._built_weights()[0].shape)

    def _built_weights(self) -> tuple[keras.Variable, keras.Variable]:
        if not self.built:
            raise ValueError(
                error_message(
                    "the wrapper's weights",
                    "a built wrapper (the kernel and u exist once it has been called or built)",
                    f"the unbuilt {type(self).__name__} {self.name!r}",
                    "Call the wrapper on a batch, or build it with wrapper.build(input_shape), first.",
                )
            )
        return self.kernel, self.vector_u

    def normalized_weights(self) -> tuple[Tensor, Tensor]:
        """Keras' method: ``(u, W / sigma)`` after ``power_iterations`` steps
        from the stored ``u``, storing nothing (a training call stores ``u``;
        ``in_place=True`` also the kernel)."""
        self._built_weights()
        kernel = kernel_variable(self.layer, _kernel_attribute(self.layer), fold=True)
        w, u, _ = spectral_norm(kernel, self.vector_u, self.power_iterations)
        return ops.cast(u, self.vector_u.dtype), ops.cast(w, kernel.dtype)

    def normalized_kernel(self, training: bool = False) -> Tensor:
        """``W / sigma``, refining ``u`` (and storing it) when ``training``."""
        self._built_weights()
        kernel = kernel_variable(self.layer, _kernel_attribute(self.layer), fold=True)
        w, u, _ = spectral_norm(
            kernel, self.vector_u, self.power_iterations if training else 0
        )
        if training:
            self.vector_u.assign(ops.cast(u, self.vector_u.dtype))
        return w

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        with full_precision(self.vector_u):
            return ops.cast(self._call(inputs, check_training(training)), self.compute_dtype)

    def _call(self, inputs: Tensor, training: bool | None) -> Tensor:
        attribute = _kernel_attribute(self.layer)
        kernel = kernel_variable(self.layer, attribute, wrapper=self)  # refuses LoRA (see SavedLora)
        if self.in_place:
            if training:
                if in_stateless_call() and not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"{type(self).__name__} {self.name!r} with in_place=True: {STATELESS_DISCARDS}, "
                        "so the stored kernel is not normalized. Use in_place=False.",
                        UserWarning,
                        stacklevel=3,
                    )
                kernel.assign(ops.cast(self.normalized_kernel(training=True), kernel.dtype))
            # then the stored kernel, run through the shared helper like the default
            # mode's (channels-first convolutions on TensorFlow CPU, bias placement)
        else:
            kernel = self.normalized_kernel(training=bool(training))
        return call_with_kernel(self.layer, inputs, kernel, attribute=attribute, add_lora=True)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "power_iterations": self.power_iterations,
            "in_place": self.in_place,
        }


def spectral_normalization(
    layer: keras.layers.Layer | None = None, power_iterations: int = 1, in_place: bool = False, **kwargs: Any
) -> SpectralNormalization:
    """Wrapper, not an activation norm: spectral-normalizes the Dense/Conv/Embedding layer given as ``layer=``
    (transposed and depthwise convolutions too).

    Returns ``SpectralNormalization(layer, power_iterations, in_place, **kwargs)``;
    the registry's factory for ``"spectral_norm"``.
    """
    if layer is None:
        raise missing_layer("spectral_norm", "a Dense, Conv or Embedding layer")
    return SpectralNormalization(layer, power_iterations=power_iterations, in_place=in_place, **kwargs)
