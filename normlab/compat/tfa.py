"""TensorFlow Addons compatibility: load ``Addons>...`` normalization layers with normlab.

TF Addons is unmaintained and does not install with current TensorFlow or
Keras 3, but models saved with its normalization layers are common. This
module reads them on any Keras 3 backend, without TF Addons:

* :func:`custom_objects` maps the five registered names
  (``Addons>GroupNormalization``, ``Addons>InstanceNormalization``,
  ``Addons>FilterResponseNormalization``, ``Addons>WeightNormalization``,
  ``Addons>SpectralNormalization``) to loaders that build the matching
  normlab layer from TF Addons' config, for
  ``keras.saving.load_model(path, custom_objects=...)`` (``.h5`` files and
  ``.keras`` archives) and ``keras.models.model_from_json``;
* :func:`model_from_config` / :func:`model_from_json` read TF-Keras 2 model
  configs and JSON (which ``keras.models.model_from_json`` in Keras 3 no
  longer understands: it needs a ``module`` key TF-Keras 2 did not write);
* :func:`load_weights` / :func:`load_model` read TF-Keras 2 ``.h5`` files
  matching TF Addons' weight names (``g``, ``sn_u``, ``learned_epsilon``, ...)
  to normlab's weights, so files that Keras' order-based loader rejects
  (TF Addons' WeightNormalization with ``data_init=True`` also saved the
  weights of an internal copy of the wrapped layer; FilterResponseNormalization
  stored ``gamma``/``beta`` as ``(1, 1, 1, C)``) load too.

The loaded layers are ordinary normlab layers and save as such
(``normlab>GroupNormalization``, ...). Every TF Addons argument keeps its
name; the conversions are:

* ``InstanceNormalization``: TF Addons wrote ``groups`` (-1, or the channel
  count once built) into the config; it is dropped.
* ``FilterResponseNormalization``: TF Addons used ``abs(epsilon)``; so does
  the loader. ``axis`` (the spatial axes, e.g. ``[1, 2]``) keeps TF Addons'
  meaning, and no TLU is added (``use_tlu=False``), as in TF Addons.
* ``SpectralNormalization``: built with ``in_place=True``, TF Addons'
  behaviour (the kernel is overwritten with ``W / sigma`` in training and
  used as stored in inference), so outputs match what TF Addons gave.
* ``WeightNormalization``: same arguments. Loaded weights include
  ``initialized``, so no data-dependent initialization runs again.

Example:
    >>> import json, numpy as np, keras, normlab
    >>> from normlab.compat import tfa
    >>> config = {"class_name": "Addons>GroupNormalization",
    ...           "config": {"name": "gn", "groups": 2, "axis": -1, "epsilon": 1e-3,
    ...                      "center": True, "scale": True}}
    >>> layer = keras.saving.deserialize_keras_object(config, custom_objects=tfa.custom_objects())
    >>> type(layer).__name__, layer.groups
    ('GroupNormalization', 2)
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from typing import Any

import keras
import numpy as np

from normlab import _compat
from normlab.ops.validate import ArgumentTypeError, error_message

__all__ = [
    "TFA_LAYERS",
    "custom_objects",
    "load_model",
    "load_weights",
    "model_from_config",
    "model_from_json",
]

#: TF Addons' registered name -> normlab class (module, attribute).
TFA_LAYERS = {
    "Addons>GroupNormalization": ("normlab.layers.group_norm", "GroupNormalization"),
    "Addons>InstanceNormalization": ("normlab.layers.instance_norm", "InstanceNormalization"),
    "Addons>FilterResponseNormalization": (
        "normlab.layers.filter_response_norm",
        "FilterResponseNormalization",
    ),
    "Addons>WeightNormalization": ("normlab.layers.weight_norm", "WeightNormalization"),
    "Addons>SpectralNormalization": ("normlab.layers.spectral_norm", "SpectralNormalization"),
}

#: TF Addons weight names that differ from normlab's (basename -> basename).
WEIGHT_RENAMES = {"sn_u": "vector_u"}

# Base-layer keys a TF-Keras 2 layer config may hold besides the layer's own.
_BASE_KEYS = ("name", "trainable", "dtype", "autocast")


def _normlab_class(tfa_name: str) -> type[keras.layers.Layer]:
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
    cls = _normlab_class(tfa_name)
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
    if "module" in layer_config:
        return keras.saving.deserialize_keras_object(layer_config, custom_objects=objects)
    config = _drop_tf_keras_2_keys(json.loads(json.dumps(layer_config)))  # TF-Keras 2 (no "module")
    return _compat.legacy_model_from_config(config, objects)


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
        if isinstance(epsilon, (list, tuple)):  # a serialized scalar tensor
            epsilon = np.asarray(epsilon).reshape(-1)[0]
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


_LOADERS = (
    GroupNormalizationLoader,
    InstanceNormalizationLoader,
    FilterResponseNormalizationLoader,
    WeightNormalizationLoader,
    SpectralNormalizationLoader,
)


def custom_objects_dict() -> dict[str, type[_Loader]]:
    """``{"Addons>GroupNormalization": loader, ...}`` for the five TF Addons norms."""
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


def _attribute_list(group: Any, name: str) -> list[str]:
    """A TF-Keras 2 string-list attribute (possibly chunked as name0, name1, ...)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for v in values]


def _basename(weight_name: str) -> str:
    base = weight_name.split("/")[-1].split(":")[0]
    return WEIGHT_RENAMES.get(base, base)


def _by_name_layers() -> tuple[type[keras.layers.Layer], ...]:
    classes = []
    for tfa_name in TFA_LAYERS:
        try:
            classes.append(_normlab_class(tfa_name))
        except ImportError:
            pass
    return tuple(classes)


def _assign(variable: keras.Variable, value: Any, where: str) -> None:
    value = np.asarray(value)
    shape = tuple(variable.shape)
    if value.shape != shape:
        if value.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(
                error_message(
                    "filepath",
                    f"a saved weight of shape {shape} for {variable.path}",
                    f"shape {value.shape} for {where}",
                    "Check that the file belongs to this model.",
                )
            )
        value = value.reshape(shape)
    variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))


def _load_layer(
    layer: keras.layers.Layer, group: Any, by_name_classes: tuple[type[keras.layers.Layer], ...]
) -> None:
    names = _attribute_list(group, "weight_names")
    values = [np.asarray(group[name]) for name in names]
    where = f"layer {layer.name!r} in the file"
    if isinstance(layer, by_name_classes):
        saved: dict[str, np.ndarray] = {}
        for name, value in zip(names, values):
            saved.setdefault(_basename(name), value)  # first wins: later copies are internal
        for variable in layer.weights:
            if variable.name not in saved:
                raise ValueError(
                    error_message(
                        "filepath",
                        f"a saved weight named {variable.name!r} for layer {layer.name!r}",
                        f"weights {names}",
                        "Check that the file belongs to this model.",
                    )
                )
            _assign(variable, saved[variable.name], f"{where}, weight {variable.name!r}")
        return
    variables = layer.trainable_weights + layer.non_trainable_weights  # TF-Keras 2 order
    if len(variables) != len(values):
        raise ValueError(
            error_message(
                "filepath",
                f"{len(variables)} saved weights for layer {layer.name!r}",
                f"{len(values)} weights {names}",
                "Check that the file belongs to this model.",
            )
        )
    for variable, name, value in zip(variables, names, values):
        _assign(variable, value, f"{where}, weight {name!r}")


def load_weights(model: keras.Model, filepath: str | os.PathLike[str] | Any) -> None:
    """Loads a TF-Keras 2 ``.h5`` weights file (or a full-model ``.h5``) into ``model``.

    Layers are matched by name when every weighted layer of the file has a
    namesake in the model, otherwise in order, as Keras does. Inside a
    layer, weights of normlab's TF Addons counterparts are matched by name
    (``sn_u`` is ``vector_u``; extra weights TF Addons kept for itself are
    skipped; ``(1, 1, 1, C)`` arrays fill ``(C,)`` weights), those of other
    layers in TF-Keras 2's order (trainable, then non-trainable).

    Args:
        model: a built Keras 3 model, e.g. from :func:`model_from_config`.
        filepath: path to the ``.h5`` file, or an open ``h5py.File``.

    Example:
        >>> import keras, normlab
        >>> from normlab.compat import tfa
        >>> callable(tfa.load_weights)
        True
    """
    import h5py

    opened = not isinstance(filepath, (h5py.File, h5py.Group))
    f: Any = h5py.File(filepath, "r") if opened else filepath  # an h5py File or Group (h5py is untyped)
    try:
        group = f["model_weights"] if "model_weights" in f else f
        file_layers = [
            name for name in _attribute_list(group, "layer_names")
            if _attribute_list(group[name], "weight_names")
        ]
        model_layers = {layer.name: layer for layer in model.layers if layer.weights}
        if set(file_layers) <= set(model_layers):
            pairs = [(model_layers[name], name) for name in file_layers]
        else:
            ordered = [layer for layer in model.layers if layer.weights]
            if len(ordered) != len(file_layers):
                raise ValueError(
                    error_message(
                        "filepath",
                        f"weights for the model's {len(ordered)} layers that have weights",
                        f"{len(file_layers)} layers with weights in {filepath!r}",
                        "Check that the file belongs to this model.",
                    )
                )
            pairs = list(zip(ordered, file_layers))
        by_name_classes = _by_name_layers()
        for layer, name in pairs:
            _load_layer(layer, group[name], by_name_classes)
    finally:
        if opened:
            f.close()


def load_model(filepath: str | os.PathLike[str], custom_objects: dict[str, Any] | None = None) -> keras.Model:
    """Loads a TF-Keras 2 full-model ``.h5`` file with TF Addons norms, uncompiled.

    The architecture comes from the file's ``model_config`` through
    :func:`model_from_config`, the weights through :func:`load_weights`.
    The training configuration is not restored: compile the model again.

    Args:
        filepath: path to the ``.h5`` file.
        custom_objects: more custom objects. Default None.

    Returns:
        A Keras 3 model using normlab's layers, weights loaded.
    """
    import h5py

    with h5py.File(filepath, "r") as f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise ValueError(
                error_message(
                    "filepath",
                    "a full-model .h5 file (with a `model_config` attribute)",
                    f"filepath={str(filepath)!r} without a model config",
                    "For a weights-only file, build the model and call load_weights(model, filepath).",
                )
            )
        config = json.loads(raw.decode("utf8") if hasattr(raw, "decode") else raw)
        model = model_from_config(config, custom_objects)
        load_weights(model, f)
    return model
