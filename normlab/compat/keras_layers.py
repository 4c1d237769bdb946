"""Keras' own normalization layers in an existing model, replaced by normlab's.

A model built with ``keras.layers.BatchNormalization``,
``GroupNormalization``, ``LayerNormalization`` or ``RMSNormalization``
(``keras.applications``, a ``.keras`` file, a tutorial's network) moves to
normlab's layers of the same names without being rebuilt by hand:
:func:`convert` returns a copy of the model in which each of those layers is
normlab's class made from the Keras layer's own config, with its weights
(moving statistics included) and ``trainable`` state; every other layer is
copied as :func:`keras.models.clone_model` copies it, with its weights and
assets (an adapted lookup layer's vocabulary) as a ``.keras`` file keeps them.

normlab's classes take Keras' arguments name for name, so nothing is
translated: the outputs are Keras' to float rounding (exact where Keras'
statistics are not, at large offsets; ``docs/migration.md``). Only the
exact classes are replaced, not subclasses of them (a subclass may change
``call``), and only layers of the model's graph: a Keras norm created inside
a custom layer stays Keras'.

``keras.saving.load_model(path, custom_objects=...)`` cannot do this: Keras
resolves its own built-in classes before custom objects. Load the file,
then convert it.

:func:`to_keras` goes the other way, for tools that know only Keras' built-in
classes (converters to other formats, an environment without normlab):
each of normlab's four layers becomes Keras' class of the same name, where
its arguments are ones Keras' class has (normlab's extras at their
defaults; otherwise a ``ValueError`` names the layer and the argument).

Example:
    >>> import keras, numpy as np, normlab
    >>> from normlab.compat import keras_layers
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3),
    ...                           keras.layers.BatchNormalization(), keras.layers.GroupNormalization(4)])
    >>> converted = keras_layers.convert(model)
    >>> [type(layer).__module__.split(".")[0] for layer in converted.layers]
    ['keras', 'normlab', 'normlab']
    >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    >>> to_numpy = keras.ops.convert_to_numpy
    >>> bool(np.allclose(to_numpy(converted(x)), to_numpy(model(x)), atol=1e-5))
    True
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import keras

from normlab import _compat
from normlab.layers import BatchNormalization, GroupNormalization, LayerNormalization, RMSNormalization
from normlab.ops.validate import error_message

_LayerType = type[keras.layers.Layer]

#: Keras' classes and the normlab classes that replace them (same name, same arguments).
REPLACEMENTS: dict[_LayerType, _LayerType] = {
    keras.layers.BatchNormalization: BatchNormalization,
    keras.layers.GroupNormalization: GroupNormalization,
    keras.layers.LayerNormalization: LayerNormalization,
    keras.layers.RMSNormalization: RMSNormalization,
}


def convert(model: keras.Model, *, layers: Iterable[str] | None = None) -> keras.Model:
    """A copy of ``model`` with Keras' normalization layers replaced by normlab's.

    Args:
        model: a ``keras.Sequential`` or functional ``keras.Model`` (a
            subclass of the functional ``Model`` comes back as an instance
            of its class with the same graph, as from
            ``keras.models.clone_model``).
            Nested Sequential and functional models are converted too.
            The original is left as it was.
        layers: the class names to replace, a subset of
            ``"BatchNormalization"``, ``"GroupNormalization"``,
            ``"LayerNormalization"`` and ``"RMSNormalization"``. Default
            None: all four.

    Returns:
        The converted model, uncompiled (compile it again to train it).

    Raises:
        ValueError: ``model`` is a subclassed model, or ``layers`` names
            another class.
    """
    return _swap(model, _wanted(layers, REPLACEMENTS), lambda layer, cls: cls.from_config(layer.get_config()))


def to_keras(model: keras.Model, *, layers: Iterable[str] | None = None) -> keras.Model:
    """A copy of ``model`` with normlab's four Keras-named norms replaced by Keras' classes.

    The inverse of :func:`convert`, for tools that know only Keras' built-in
    layers. normlab's arguments that Keras' class lacks must be at their
    defaults (``virtual_batch_size=None`` and ``use_moving_statistics=False``
    for batch norm; for RMS norm ``center=False``, ``scale=True`` and no
    regularizer or constraint); initializers are dropped (the weights are copied).

    Example:
        >>> import keras, normlab
        >>> from normlab.compat import keras_layers
        >>> model = keras.Sequential([keras.Input((4,)), normlab.LayerNormalization()])
        >>> type(keras_layers.to_keras(model).layers[0]) is keras.layers.LayerNormalization
        True

    Args:
        model: as for :func:`convert`.
        layers: the class names to replace, as for :func:`convert`. Default None: all four.

    Returns:
        The converted model, uncompiled.

    Raises:
        ValueError: ``model`` is a subclassed model, ``layers`` names
            another class, or a layer uses an argument Keras' class lacks.
    """
    inverse = {normlab_cls: keras_cls for keras_cls, normlab_cls in REPLACEMENTS.items()}
    return _swap(model, _wanted(layers, inverse), lambda layer, cls: cls.from_config(_keras_config(layer, cls)))


def _swap(model: keras.Model, wanted: dict[_LayerType, _LayerType],
          make: Callable[[Any, _LayerType], Any]) -> keras.Model:
    if not isinstance(model, keras.Model) or not _is_graph_model(model):
        raise ValueError(error_message(
            "model", "a keras.Sequential or functional keras.Model (a graph of layers)",
            f"a {type(model).__name__}",
            "For a subclassed model, create the layers you want in its __init__ instead: normlab's take "
            "the Keras layers' arguments name for name."))

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        cls = wanted.get(type(layer))
        return make(layer, cls) if cls is not None else type(layer).from_config(layer.get_config())

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _copy_weights(model, converted)
    _compat.set_own_trainable(converted, model.trainable)
    return converted


def _wanted(layers: Iterable[str] | None, mapping: dict[_LayerType, _LayerType]) -> dict[_LayerType, _LayerType]:
    if layers is None:
        return dict(mapping)
    by_name = {cls.__name__: cls for cls in mapping}
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(error_message("layers", f"class names among {sorted(by_name)}", repr(layers),
                                       f"Remove {unknown}."))
    return {by_name[name]: mapping[by_name[name]] for name in names}


def _keras_config(layer: keras.layers.Layer, keras_cls: _LayerType) -> dict[str, Any]:
    """``layer``'s config without normlab's extra arguments, which must be at their defaults."""
    config = layer.get_config()
    if keras_cls is keras.layers.RMSNormalization:
        _check_trailing_axes(layer, config["axis"])
    defaults = type(layer)().get_config()
    accepted = set(keras_cls().get_config())
    for key in [key for key in config if key not in accepted]:
        if config[key] != defaults.get(key) and not key.endswith("_initializer"):
            raise ValueError(
                f"Cannot convert layer {layer.name!r} to keras.layers.{keras_cls.__name__}: it has "
                f"{key}={config[key]!r}, which Keras' class lacks (only {defaults.get(key)!r} converts). "
                "Keep normlab's layer (pass `layers=` without this class), or rebuild it without that argument.")
        del config[key]
    return config


def _check_trailing_axes(layer: keras.layers.Layer, axis: Any) -> None:
    """Keras' RMSNormalization computes only over trailing axes (3.15: other axes
    fail to broadcast its scale, or put it on the wrong axes)."""
    axes = [axis] if isinstance(axis, int) else list(axis)
    try:
        rank: int | None = len(layer.input.shape)
    except (AttributeError, ValueError):  # never called
        rank = None
    if rank is None:
        if any(a >= 0 for a in axes):
            raise ValueError(
                f"Cannot convert layer {layer.name!r} to keras.layers.RMSNormalization: it has not been "
                f"called, so whether axis={axis!r} names the trailing axes (all Keras' class supports) "
                "depends on an input rank not known yet. Call the model once, or write the axes as "
                "negative ones (axis=-1).")
        trailing = sorted(axes) == list(range(-len(axes), 0))  # -k..-1 trail at any rank
        where = "of an input not seen yet"
    else:
        canonical = sorted(a % rank for a in axes)
        trailing = canonical == list(range(rank - len(canonical), rank))
        where = f"of a rank-{rank} input"
    if not trailing:
        raise ValueError(
            f"Cannot convert layer {layer.name!r} to keras.layers.RMSNormalization: it normalizes over "
            f"axis={axis!r} {where}, and Keras' class supports only trailing axes. Keep "
            "normlab's layer (pass `layers=` without RMSNormalization), or move those axes last.")


def _is_graph_model(model: keras.Model) -> bool:
    """Sequential or functional: a model ``clone_model`` can rebuild layer by layer."""
    return isinstance(model, (keras.Sequential, keras.Function))


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Each layer's weights and assets from ``source`` into its clone in ``target``
    (same names; the clone's input layers are renamed, but hold neither)."""
    for layer in source.layers:
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            clone = target.get_layer(layer.name)
            _copy_weights(layer, clone)
            # (A nested model's own flag is not in its config: clone_model makes it trainable.)
            _compat.set_own_trainable(clone, layer.trainable)
            continue
        if callable(getattr(layer, "save_assets", None)):  # what a .keras file keeps beside weights
            with tempfile.TemporaryDirectory() as folder:  # (an adapted lookup layer's vocabulary)
                layer.save_assets(folder)
                target.get_layer(layer.name).load_assets(folder)
        if not layer.weights:
            continue
        clone = target.get_layer(layer.name)
        if type(clone) is not type(layer) or _named_alike(layer, clone):
            # By name where the names tell: a layer rebuilt from its config may create its
            # weights in another order (a float8-quantized Dense: its scales before its kernel).
            _copy_by_name(layer, clone)
        else:
            clone.set_weights(layer.get_weights())
        if callable(getattr(clone, "finalize_state", None)):
            # What Keras' loading calls after assigning weights: an adapted Normalization
            # computes the statistics it uses from its adapted ones there.
            clone.finalize_state()


def _named_alike(layer: keras.layers.Layer, clone: keras.layers.Layer) -> bool:
    """Whether both layers' weights have the same names, none twice (not a Bidirectional's two halves)."""
    names = [weight.name for weight in layer.weights]
    return len(set(names)) == len(names) and sorted(names) == sorted(weight.name for weight in clone.weights)


def _copy_by_name(layer: keras.layers.Layer, clone: keras.layers.Layer) -> None:
    """A replaced layer's weights, matched by name (never by position alone)."""
    targets: dict[str, Any] = {weight.name: weight for weight in clone.weights}
    for weight in layer.weights:
        name = weight.name  # (the same in both: normlab's RMS norm calls its weight ``scale``, as Keras')
        if name not in targets or tuple(targets[name].shape) != tuple(weight.shape):
            axis = getattr(layer, "axis", None)
            axes = list(axis) if isinstance(axis, (list, tuple)) else []
            mixed = len({a < 0 for a in axes}) > 1
            raise ValueError(f"Cannot convert layer {layer.name!r}: its weight {weight.name!r} "
                             f"{tuple(weight.shape)} has no counterpart in {type(clone).__name__} "
                             f"(weights {[(w.name, tuple(w.shape)) for w in clone.weights]})."
                             + (f" Its axis={axes} mixes negative and non-negative axes, which Keras "
                                "orders by value and normlab by position (docs/migration.md); give every "
                                "axis as a non-negative position." if mixed else ""))
        targets.pop(name).assign(weight.numpy())  # a copy: JAX's training step donates the original's buffers
    if targets:
        raise ValueError(f"Cannot convert layer {layer.name!r}: {type(clone).__name__} has weights "
                         f"{sorted(targets)} that {type(layer).__name__} lacks.")
