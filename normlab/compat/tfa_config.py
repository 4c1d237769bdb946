"""TF Addons' layer configs as normlab layers: the ``custom_objects`` loaders
and the TF-Keras 2 model config readers behind :mod:`normlab.compat.tfa`."""

from __future__ import annotations

import importlib
import inspect
import json
import numbers
from typing import Any, Mapping

import keras
import numpy as np

from normlab import _compat
from normlab.ops.validate import ArgumentTypeError, error_message

TFA_LAYERS = {
    "Addons>GroupNormalization": ("normlab.layers.group_norm", "GroupNormalization"),
    "Addons>InstanceNormalization": ("normlab.layers.instance_norm", "InstanceNormalization"),
    "Addons>FilterResponseNormalization": (
        "normlab.layers.filter_response_norm",
        "FilterResponseNormalization",
    ),
    "Addons>WeightNormalization": ("normlab.layers.weight_norm", "WeightNormalization"),
    "Addons>SpectralNormalization": ("normlab.layers.spectral_norm", "SpectralNormalization"),
    "Addons>TLU": ("normlab.layers.filter_response_norm", "TLU"),
}

# Base-layer keys a TF-Keras 2 layer config may hold besides the layer's own.
_BASE_KEYS = ("name", "trainable", "dtype", "autocast")


def normlab_class(tfa_name: str) -> type[keras.layers.Layer]:
    module_name, attribute = TFA_LAYERS[tfa_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"Cannot load TF Addons' {tfa_name!r}: its normlab counterpart "
            f"{module_name}.{attribute} is not available in this installation ({error}). "
            "Upgrade normlab."
        ) from error
    return getattr(module, attribute)


def _accepted(cls: type[keras.layers.Layer]) -> set[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name
        for p in parameters
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _base_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Pops the base-layer keys from a TF-Keras 2 config, in Keras 3's form."""
    base = {key: config.pop(key) for key in _BASE_KEYS if key in config}
    dtype = base.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") in ("Policy", "DTypePolicy"):
        base["dtype"] = dtype.get("config", {}).get("name", "float32")
    # TF-Keras 2 wrote the full batch shape; Keras 3's legacy loader renames
    # it to input_shape unchanged. Layers take the shape without the batch.
    shape = config.pop("batch_input_shape", None) or config.pop("input_shape", None)
    if shape is not None:
        base["input_shape"] = tuple(shape[1:])
    return base


def _build(
    tfa_name: str, config: dict[str, Any], *, drop: tuple[str, ...] = (), **overrides: Any
) -> keras.layers.Layer:
    """Instantiates the normlab class for ``tfa_name`` from TF Addons' ``config``."""
    cls = normlab_class(tfa_name)
    config = dict(config)
    base = _base_kwargs(config)
    for key in drop:
        config.pop(key, None)
    unknown = sorted(set(config) - _accepted(cls))
    if unknown:
        raise ValueError(
            error_message(
                "config",
                f"the arguments of TF Addons' {tfa_name} ({', '.join(sorted(_accepted(cls)))})",
                f"unknown keys {unknown} in the config of layer {base.get('name')!r}",
                "The file was probably written by a newer TF Addons or edited by hand; "
                "remove those keys from the config.",
            )
        )
    config.update(overrides)
    return cls(**config, **base)


#: Keys TF-Keras 2 wrote into layer configs that Keras 3 rejects, by class.
_TF_KERAS_2_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "LSTM": ("time_major",), "GRU": ("time_major",), "SimpleRNN": ("time_major",), "RNN": ("time_major",)
}


def _drop_tf_keras_2_keys(config: Any) -> Any:
    """Removes, in place and recursively, the config keys Keras 3 no longer accepts
    (``time_major`` of TF-Keras 2's recurrent layers, always False in TF Addons models)."""
    if isinstance(config, dict):
        inner = config.get("config")
        if isinstance(inner, dict):
            for key in _TF_KERAS_2_ONLY_KEYS.get(config.get("class_name", ""), ()):
                inner.pop(key, None)
        for value in config.values():
            _drop_tf_keras_2_keys(value)
    elif isinstance(config, list):
        for value in config:
            _drop_tf_keras_2_keys(value)
    return config


def _deserialize_layer(layer_config: Any, custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
    """Deserializes a wrapped layer's config, in TF-Keras 2 or Keras 3 format."""
    if isinstance(layer_config, keras.layers.Layer):
        return layer_config
    objects = {**custom_objects_dict(), **(custom_objects or {})}
    # (TF-Keras 2.13+ write a "module" too, and their LSTM's time_major as well)
    config = _drop_tf_keras_2_keys(json.loads(json.dumps(layer_config)))
    if "module" in config:
        return keras.saving.deserialize_keras_object(config, custom_objects=objects)
    return _compat.legacy_model_from_config(config, objects)  # TF-Keras 2 before 2.13


class _Loader:
    """Base of the ``custom_objects`` values: ``from_config`` builds a normlab layer."""

    tfa_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never instantiated
        raise ArgumentTypeError(
            f"{type(self).__name__} only converts TF Addons configs (from_config); "
            f"use normlab's {TFA_LAYERS[self.tfa_name][1]} directly."
        )

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> keras.layers.Layer:
        return cls.convert(dict(config), custom_objects)

    @classmethod
    def convert(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
        return _build(cls.tfa_name, config)


class GroupNormalizationLoader(_Loader):
    """``Addons>GroupNormalization`` -> :class:`normlab.layers.GroupNormalization` (same arguments)."""

    tfa_name = "Addons>GroupNormalization"


class InstanceNormalizationLoader(_Loader):
    """``Addons>InstanceNormalization`` -> :class:`normlab.layers.InstanceNormalization`.

    TF Addons stored ``groups`` (-1, or the channel count after building);
    it is dropped.
    """

    tfa_name = "Addons>InstanceNormalization"

    @classmethod
    def convert(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
        return _build(cls.tfa_name, config, drop=("groups",))


class FilterResponseNormalizationLoader(_Loader):
    """``Addons>FilterResponseNormalization`` -> :class:`normlab.layers.FilterResponseNormalization`.

    ``epsilon`` becomes ``abs(epsilon)`` (TF Addons' computation); no TLU.
    """

    tfa_name = "Addons>FilterResponseNormalization"

    @classmethod
    def convert(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
        epsilon = config.pop("epsilon", 1e-6)
        if isinstance(epsilon, (list, tuple)) and np.size(epsilon) == 1:  # a serialized scalar tensor
            epsilon = np.asarray(epsilon).reshape(-1)[0]
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
            raise ArgumentTypeError(
                f"Invalid `epsilon` in a TF Addons FilterResponseNormalization config: expected a number. "
                f"Received: epsilon={epsilon!r}. Set it to the layer's epsilon (TF Addons' default is 1e-6)."
            )
        return _build(cls.tfa_name, config, epsilon=abs(float(epsilon)), use_tlu=False)


class WeightNormalizationLoader(_Loader):
    """``Addons>WeightNormalization`` -> :class:`normlab.layers.WeightNormalization`."""

    tfa_name = "Addons>WeightNormalization"

    @classmethod
    def convert(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
        layer = _deserialize_layer(config.pop("layer"), custom_objects)
        return _build(cls.tfa_name, config, layer=layer)


class SpectralNormalizationLoader(_Loader):
    """``Addons>SpectralNormalization`` -> :class:`normlab.layers.SpectralNormalization`
    with ``in_place=True`` (TF Addons' behaviour)."""

    tfa_name = "Addons>SpectralNormalization"

    @classmethod
    def convert(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None) -> keras.layers.Layer:
        layer = _deserialize_layer(config.pop("layer"), custom_objects)
        return _build(cls.tfa_name, config, layer=layer, in_place=True)


class TLULoader(_Loader):
    """``Addons>TLU`` -> :class:`normlab.layers.TLU` (same arguments; channels last).

    TF Addons' TLU kept one ``tau`` (and ``alpha``) per element of the input,
    normlab's one per channel: :func:`normlab.compat.tfa.load_weights` takes
    saved values that agree across positions and refuses others.
    """

    tfa_name = "Addons>TLU"


_LOADERS = (
    GroupNormalizationLoader,
    InstanceNormalizationLoader,
    FilterResponseNormalizationLoader,
    WeightNormalizationLoader,
    SpectralNormalizationLoader,
    TLULoader,
)


def custom_objects_dict() -> dict[str, type[_Loader]]:
    """``{"Addons>GroupNormalization": loader, ...}`` for the five TF Addons norms and TLU."""
    return {loader.tfa_name: loader for loader in _LOADERS}


def custom_objects(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``custom_objects`` that load TF Addons' normalization layers as normlab's.

    Args:
        extra: more custom objects of your own (losses, layers) to merge in.
            Default None.

    Returns:
        A new dict for ``keras.saving.load_model(..., custom_objects=...)``,
        ``keras.models.model_from_json`` or :func:`model_from_json`.

    Example:
        >>> from normlab.compat import tfa
        >>> sorted(tfa.custom_objects())[:2]
        ['Addons>FilterResponseNormalization', 'Addons>GroupNormalization']
    """
    if extra is not None and not isinstance(extra, Mapping):
        raise ArgumentTypeError(
            f"Invalid `extra`: expected a dict of custom objects, name -> class or function. Received: "
            f"extra={extra!r} of type {type(extra).__name__}. Pass e.g. extra={{'MyLayer': MyLayer}}."
        )
    return {**custom_objects_dict(), **(extra or {})}


def model_from_config(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> keras.Model:
    """Builds a Keras 3 model from a TF-Keras 2 model config with TF Addons norms.

    Args:
        config: ``{"class_name": "Sequential" | "Functional" | ..., "config": {...}}``
            as TF-Keras 2 wrote it (``model.get_config()`` wrapped, or the
            ``model_config`` of an ``.h5`` file).
        custom_objects: more custom objects. Default None.

    Returns:
        An uncompiled, unbuilt-weights Keras model using normlab's layers.
    """
    objects = custom_objects_dict()
    objects.update(custom_objects or {})
    config = _drop_tf_keras_2_keys(json.loads(json.dumps(config)))  # the legacy loader edits it in place
    return _compat.legacy_model_from_config(config, objects, legacy_scope=True)


def model_from_json(json_string: str, custom_objects: dict[str, Any] | None = None) -> keras.Model:
    """Like ``keras.models.model_from_json`` for JSON written by TF-Keras 2 (``model.to_json()``).

    Args:
        json_string: the JSON text.
        custom_objects: more custom objects. Default None.

    Returns:
        An uncompiled Keras model using normlab's layers.
    """
    return model_from_config(json.loads(json_string), custom_objects)
