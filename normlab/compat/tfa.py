"""TensorFlow Addons compatibility: load ``Addons>...`` normalization layers with normlab.

TF Addons is unmaintained and does not install with current TensorFlow or
Keras 3, but models saved with its normalization layers are common. This
module reads them on any Keras 3 backend, without TF Addons:

* :func:`custom_objects` maps the six registered names
  (``Addons>GroupNormalization``, ``Addons>InstanceNormalization``,
  ``Addons>FilterResponseNormalization``, ``Addons>WeightNormalization``,
  ``Addons>SpectralNormalization`` and FRN's activation ``Addons>TLU``) to loaders that build the matching
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
* ``TLU``: same arguments, with one ``tau``/``alpha`` per channel (last
  axis) where TF Addons kept one per element: saved values that agree
  across positions (an untrained layer) load, others are an error, since no
  per-channel layer reproduces them.

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

import json
import os
from typing import Any

import keras
import numpy as np

from normlab.compat.tfa_config import (
    TFA_LAYERS,
    custom_objects,
    custom_objects_dict,
    model_from_config,
    model_from_json,
    normlab_class,
)
from normlab.ops.validate import error_message

#: TF Addons weight names that differ from normlab's (basename -> basename).
WEIGHT_RENAMES = {"sn_u": "vector_u"}

__all__ = [
    "TFA_LAYERS",
    "custom_objects",
    "custom_objects_dict",
    "load_model",
    "load_weights",
    "model_from_config",
    "model_from_json",
]


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
            classes.append(normlab_class(tfa_name))
        except ImportError:
            pass
    return tuple(classes)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _value_for(variable: keras.Variable, value: Any, where: str, per_channel: bool = False) -> np.ndarray:
    """``value`` in ``variable``'s shape: as saved, or with size-1 axes added or
    dropped (TF Addons' ``(1, 1, 1, C)`` for ``(C,)``); with ``per_channel``, a
    per-element array whose positions all agree gives its last axis."""
    value = np.asarray(value)
    shape = tuple(variable.shape)
    if value.shape != shape and per_channel and len(shape) == 1 and value.ndim > 1 and value.shape[-1] == shape[0]:
        rows = value.reshape(-1, shape[0])
        if not np.all(rows == rows[:1]):
            raise ValueError(
                error_message(
                    "filepath",
                    f"one value per channel for {variable.path} (normlab's TLU has shape {shape})",
                    f"TF Addons' per-element values of shape {value.shape} for {where}, which differ "
                    "across positions",
                    "No per-channel layer reproduces them: keep the TF-Keras 2 model for this layer, "
                    "or retrain it with normlab.layers.TLU.",
                )
            )
        value = rows[0]
    if value.shape != shape:
        if _squeezed(value.shape) != _squeezed(shape):
            raise ValueError(
                error_message(
                    "filepath",
                    f"a saved weight of shape {shape} for {variable.path}",
                    f"shape {value.shape} for {where}",
                    "Check that the file belongs to this model.",
                )
            )
        value = value.reshape(shape)
    return value.astype(keras.backend.standardize_dtype(variable.dtype))


def _layer_values(
    layer: keras.layers.Layer, group: Any, by_name_classes: tuple[type[keras.layers.Layer], ...]
) -> list[tuple[keras.Variable, np.ndarray]]:
    """``(variable, value)`` for every weight of ``layer`` from the file's ``group``."""
    names = _attribute_list(group, "weight_names")
    values = [np.asarray(group[name]) for name in names]
    if isinstance(layer, keras.Model):
        return _nested_values(layer, names, values, by_name_classes)
    return _named_values(layer, names, values, by_name_classes)


def _weighted_leaves(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers with weights inside ``model``, nested models opened, in order."""
    leaves: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves += _weighted_leaves(layer)
        elif layer.weights:
            leaves.append(layer)
    return leaves


def _nested_values(
    model: keras.Model, names: list[str], values: list[np.ndarray],
    by_name_classes: tuple[type[keras.layers.Layer], ...],
) -> list[tuple[keras.Variable, np.ndarray]]:
    """A nested model's weights: TF-Keras 2 saved them in one group, each named
    after the layer that made it (``wn/g:0``), so each layer takes its own, by
    name where it is a TF Addons counterpart; in order where the names do not
    say (as Keras does). A weight named without a layer (TF Addons' FRN made
    ``learned_epsilon`` in ``__init__``, outside its name scope: it comes first,
    as ``learned_epsilon:0``) belongs to the layer whose weights follow it."""
    by_layer: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    unscoped: list[tuple[str, np.ndarray]] = []
    for name, value in zip(names, values):
        if "/" not in name:
            unscoped.append((name, value))
            continue
        own = by_layer.setdefault(name.split("/")[0], ([], []))
        for saved, array in [*unscoped, (name, value)]:
            own[0].append(saved)
            own[1].append(array)
        unscoped = []
    for name, value in unscoped:  # none follows: named as they are
        by_layer.setdefault(name, ([], []))
        by_layer[name][0].append(name)
        by_layer[name][1].append(value)
    leaves = _weighted_leaves(model)
    if set(by_layer) != {leaf.name for leaf in leaves}:
        if any(isinstance(leaf, by_name_classes) for leaf in leaves):  # in order, they would load wrongly
            raise ValueError(error_message(
                "filepath", f"the weights of nested model {model.name!r} named after its layers "
                f"{sorted(leaf.name for leaf in leaves)} (as TF-Keras 2 saves them: 'layer/weight:0')",
                f"weights named {sorted(by_layer)} at their first level",
                "Check that the file belongs to this model; TF Addons' layers inside it take their weights "
                "by name, which these names do not give."))
        return _named_values(model, names, values, by_name_classes)
    return [pair for leaf in leaves for pair in _named_values(leaf, *by_layer[leaf.name], by_name_classes)]


def _named_values(
    layer: keras.layers.Layer, names: list[str], values: list[np.ndarray],
    by_name_classes: tuple[type[keras.layers.Layer], ...],
) -> list[tuple[keras.Variable, np.ndarray]]:
    """``(variable, value)`` for every weight of ``layer`` from the saved ``names`` and ``values``."""
    where = f"layer {layer.name!r} in the file"
    pairs: list[tuple[keras.Variable, np.ndarray]] = []
    if isinstance(layer, by_name_classes):
        saved: dict[str, np.ndarray] = {}
        for name, value in zip(names, values):
            saved.setdefault(_basename(name), value)  # first wins: later copies are internal
        per_channel = isinstance(layer, normlab_class("Addons>TLU"))
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
            pairs.append((variable, _value_for(variable, saved[variable.name],
                                                f"{where}, weight {variable.name!r}", per_channel)))
    else:
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
        pairs = [(variable, _value_for(variable, value, f"{where}, weight {name!r}"))
                 for variable, name, value in zip(variables, names, values)]
    return pairs


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
        if model_layers and not file_layers:  # (an empty set is a subset too: nothing would be assigned)
            raise ValueError(error_message(
                "filepath", "a TF-Keras 2 (TF Addons era) .h5 file with the weights of the model's layers",
                f"no layer weights (no `layer_names` attribute) in {filepath!r}",
                "A Keras 3 weights file (.weights.h5, from model.save_weights) loads with "
                "model.load_weights(path)."))
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
        values = [p for layer, name in pairs for p in _layer_values(layer, group[name], by_name_classes)]
        for variable, value in values:  # only once every weight was read and checked
            variable.assign(value)
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
