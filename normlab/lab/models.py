"""Build the lab's models from a placement spec such as ``"batch>group(groups=5)"``.

A placement is one or more norm specs (anything :func:`normlab.get` accepts)
joined by ``>``; the *n*-th norm follows the *n*-th convolution. Two
architectures are available:

``tutorial``
    The classic normalization tutorial's net: one ``Conv2D(10, 3x3)`` (no
    activation, ``valid`` padding) per norm, then ``Flatten`` ->
    ``Dense(128, relu)`` -> ``Dropout(0.2)`` -> ``Dense(classes, softmax)``.
    On MNIST the feature maps are 26x26 (then 24x24).
``deep``
    Four ``Conv2D(3x3, same) -> norm -> relu`` blocks of 20, 40, 40, 40
    channels with strides 1, 2, 2, 2 (MNIST maps: 28, 14, 7, 4), then the same
    head. A single norm is used in every block; otherwise give four.

Nothing here lists norm classes: every name comes from the registry, so a
newly registered norm slots in without new code.
"""

from __future__ import annotations

ARCHITECTURES = ("tutorial", "deep")
_DEEP_BLOCKS = ((20, 1), (40, 2), (40, 2), (40, 2))  # (filters, stride)


def split_placement(placement: str) -> list[str]:
    """Splits ``"a>b(x=1)"`` at top-level ``>`` (not inside brackets or quotes)."""
    if not isinstance(placement, str) or not placement.strip():
        raise ValueError(
            "Invalid `norms`: expected one or more norm specs joined by '>', such as "
            f"'batch' or 'batch>group(groups=5)'. Received: norms={placement!r}. "
            "Pass a non-empty spec; use 'none' for no normalization."
        )
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(placement):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == ">" and depth == 0:
            parts.append(placement[start:i])
            start = i + 1
    parts.append(placement[start:])
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise ValueError(
            "Invalid `norms`: expected norm specs joined by single '>', with none empty. "
            f"Received: norms={placement!r}. Remove the stray '>'."
        )
    return parts


def parse_placement(placement: str) -> list[tuple[str, dict]]:
    """Validates every spec of a placement: ``[(canonical name, kwargs), ...]``.

    Unknown names raise the registry's ``ValueError``, which lists the valid
    names. Imports Keras (through the registry).
    """
    from normlab.registry import parse_spec

    return [parse_spec(spec) for spec in split_placement(placement)]


def norm_specs(placement: str, arch: str = "tutorial") -> list[str]:
    """The norm spec after each convolution, for ``arch`` (see module docstring)."""
    specs = split_placement(placement)
    if arch == "tutorial":
        return specs
    if arch == "deep":
        if len(specs) == 1:
            return specs * len(_DEEP_BLOCKS)
        if len(specs) == len(_DEEP_BLOCKS):
            return specs
        raise ValueError(
            f"Invalid `norms`: expected 1 or {len(_DEEP_BLOCKS)} specs for arch='deep'. "
            f"Received: norms={placement!r} ({len(specs)} specs). "
            "Give one norm for every block or one per block."
        )
    raise ValueError(
        f"Invalid `arch`: expected one of {', '.join(ARCHITECTURES)}. Received: arch={arch!r}. "
        "Pick one of those."
    )


def build_model(placement: str, input_shape, num_classes: int = 10, *, arch: str = "tutorial",
                dropout: float = 0.2, dense_units: int = 128):
    """Builds the (uncompiled) Keras model for a placement.

    Args:
        placement: norm specs joined by ``>``, e.g. ``"group(groups=5, axis=3)"``
            or ``"batch>group(groups=5)"``.
        input_shape: one example's shape, channels-last, e.g. ``(28, 28, 1)``.
        num_classes: size of the softmax output.
        arch: ``"tutorial"`` or ``"deep"`` (see the module docstring).
        dropout: dropout rate before the output layer.
        dense_units: width of the hidden dense layer.

    Returns:
        A ``keras.Model``.

    Example:
        >>> m = build_model("batch>group(groups=5)", (28, 28, 1))
        >>> [type(l).__name__ for l in m.layers][1:5]
        ['Conv2D', 'BatchNormalization', 'Conv2D', 'GroupNormalization']
    """
    import keras

    import normlab

    specs = norm_specs(placement, arch)
    norms = [normlab.get(spec) for spec in specs]  # validates before building anything
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    if arch == "tutorial":
        for norm in norms:
            x = norm(keras.layers.Conv2D(10, (3, 3))(x))
    else:
        for norm, (filters, stride) in zip(norms, _DEEP_BLOCKS):
            x = keras.layers.Conv2D(filters, (3, 3), strides=stride, padding="same")(x)
            x = keras.layers.Activation("relu")(norm(x))
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"{arch}_{'_'.join(n.name for n in norms)}")


def parameter_counts(model) -> dict[str, int]:
    """``{"trainable": ..., "non_trainable": ...}`` scalar counts of a built model."""
    import numpy as np

    def count(weights):
        return int(sum(int(np.prod(w.shape)) for w in weights))

    return {"trainable": count(model.trainable_weights),
            "non_trainable": count(model.non_trainable_weights)}
