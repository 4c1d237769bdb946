"""Build the lab's models from a placement spec such as ``"batch>group(groups=5)"``.

A placement is one or more norm specs (anything :func:`normlab.get` accepts)
joined by ``>``; the *n*-th spec follows the *n*-th convolution, and ``none``
there means no norm after that convolution (no layer at all). Two
architectures are available:

``tutorial``
    The classic normalization tutorial's net: one ``Conv2D(10, 3x3)`` (no
    activation, ``valid`` padding) per spec, then ``Flatten`` ->
    ``Dense(128, relu)`` -> ``Dropout(0.2)`` -> ``Dense(classes, softmax)``.
    On MNIST the feature maps are 26x26 (then 24x24). ``"batch(axis=3)>none"``
    is the BatchNorm/GroupNorm tutorial's "BN only" model: a norm after the
    first convolution and none after the second.
``deep``
    Four ``Conv2D(3x3, same) -> norm -> relu`` blocks of 20, 40, 40, 40
    channels with strides 1, 2, 2, 2 (MNIST maps: 28, 14, 7, 4), then the same
    head. A single spec is used in every block; otherwise give four.

Each norm is normlab's layer (``impl="normlab"``) or Keras' built-in layer for
the same norm (``impl="keras"``, see :data:`KERAS_LAYERS`), built with the same
arguments, so the two can be trained side by side.

Nothing here lists normlab's norm classes: every name comes from the registry,
so a newly registered norm slots in without new code. Parsing placements needs
no Keras; building models imports it.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: parsing placements imports no Keras
    import keras

ARCHITECTURES = ("tutorial", "deep")
_DEEP_BLOCKS = ((20, 1), (40, 2), (40, 2), (40, 2))  # (filters, stride)
NO_NORM = ("none", "identity")  # the registry's no-op norm and its alias: no layer at all

#: normlab norm name -> (Keras layer class, arguments it always gets) for ``impl="keras"``.
KERAS_LAYERS = {
    "batch": ("BatchNormalization", {}),
    "group": ("GroupNormalization", {}),
    "instance": ("GroupNormalization", {"groups": -1}),  # one group per channel
    "layer": ("LayerNormalization", {}),
    "rms": ("RMSNormalization", {}),
}


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
            f"Received: norms={placement!r}. Remove the stray '>', or write 'none' where a "
            "convolution has no norm (e.g. 'batch>none')."
        )
    return parts


def canonical_placement(placement: str) -> str:
    """``placement`` written one way: no spaces but one after each comma (outside quotes).

    Example:
        >>> from normlab.lab.models import canonical_placement
        >>> canonical_placement(" batch >group( groups=5,axis = 3) ")
        'batch>group(groups=5, axis=3)'
    """
    out = []
    for spec in split_placement(placement):
        text, quote, escaped = "", "", False
        for char in spec:
            if quote:  # inside a string: kept as written
                quote = "" if char == quote and not escaped else quote
                escaped = char == "\\" and not escaped
            elif char in "'\"":
                quote = char
            elif char.isspace():
                continue
            elif char in ")]}" and text.endswith(", "):
                text = text[:-1]  # "f(a=1,)": no space before the bracket
            text += char + " " * (char == "," and not quote)
        out.append(text.rstrip())
    return ">".join(out)


def find_label(text: str, labels: set[str]) -> str | None:
    """The one of ``labels`` that ``text`` names: as typed, or as a placement written
    another way (:func:`canonical_placement`); None for none.

    Example:
        >>> from normlab.lab.models import find_label
        >>> find_label("group( groups = 5 )", {"batch", "group(groups=5)"})
        'group(groups=5)'
    """
    if text in labels:
        return text
    try:
        canonical = canonical_placement(text)
    except ValueError:  # not a placement
        return None
    return canonical if canonical in labels else None


def is_identity(spec: str) -> bool:
    """True for ``none`` (or its alias ``identity``), with or without arguments."""
    return spec.split("(", 1)[0].strip().lower() in NO_NORM


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


def parse_placement(placement: str) -> list[tuple[str, dict[str, Any]]]:
    """Validates every spec of a placement: ``[(canonical name, kwargs), ...]``.

    Unknown names raise the registry's ``ValueError``, which lists the valid
    names. Imports Keras (through the registry).
    """
    from normlab.registry import parse_spec

    return [parse_spec(spec) for spec in split_placement(placement)]


def make_norm(spec: str, impl: str = "normlab") -> keras.layers.Layer | None:
    """The layer for one spec: normlab's, or Keras' built-in one for ``impl="keras"``.

    Returns None for ``none`` (no layer). Keras' layer gets exactly the spec's
    arguments, so both implementations compute the same norm with the same
    defaults (``tests/lab/test_models.py`` checks that the defaults agree).

    Raises:
        ValueError: unknown norm or argument; under ``impl="keras"``, a norm Keras
            has no layer for, or an argument Keras' layer does not take.
    """
    if is_identity(spec):
        return None
    from normlab.registry import get, parse_spec, registry

    name, kwargs = parse_spec(spec)
    kind = registry()[name].kind
    if kind != "activation":
        what = {"kernel": "normalizes the kernel of the layer it wraps",
                "two-input": "is called on two inputs (AdaIN: [content, style])"}[kind]
        raise ValueError(
            "Invalid `norms`: expected norms placed after each convolution, on its output. "
            f"Received: spec={spec!r}; {name!r} {what}. "
            "Pick an activation norm: `normlab list norms` marks the others."
        )
    if impl == "normlab":
        return get(spec)
    if impl != "keras":
        raise ValueError(f"Invalid `impl`: expected normlab or keras. Received: impl={impl!r}. "
                         "Pass --impl normlab or --impl keras.")
    import keras

    get(spec)  # the same checks of names and arguments as under impl="normlab"
    cls_name, fixed = KERAS_LAYERS.get(name, (None, {}))
    cls = getattr(keras.layers, cls_name, None) if cls_name else None
    if cls is None:
        have = ", ".join(n for n, (c, _) in KERAS_LAYERS.items() if hasattr(keras.layers, c))
        raise ValueError(
            f"Invalid `impl`: Keras {keras.__version__} has no built-in layer for the norm "
            f"{name!r}. Received: impl='keras' with spec={spec!r}. Keras has: {have}. "
            "Run this norm with --impl normlab, or drop it from --norms.")
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "dtype", "trainable"}
    extra = sorted(set(kwargs) - accepted - set(fixed))
    if extra:
        raise ValueError(
            f"Invalid `impl`: keras.layers.{cls_name} has no argument {', '.join(map(repr, extra))}. "
            f"Received: impl='keras' with spec={spec!r}. Drop the argument, or use --impl normlab.")
    return cls(**{**kwargs, **fixed})


class _OwnStream:
    """A Python ``random`` stream of the norms' own, seeded from the run's seed.

    Keras draws the seed of an initializer built without one (``random_uniform``, say)
    from Python's ``random``, when the initializer is made. The norms make theirs in
    this stream (``with stream:``), so they take nothing from the draws of the
    convolutions and dense layers: every placement of a seed starts from the same
    convolution and dense weights, with or without randomly initialized norms.
    """

    def __init__(self, seed: int | None) -> None:
        self.state = None if seed is None else random.Random(f"normlab.lab norms {seed}").getstate()
        self.outer: Any = None  # Python's random state, outside the stream

    def __enter__(self) -> None:
        if self.state is not None:
            self.outer = random.getstate()
            random.setstate(self.state)

    def __exit__(self, *exc: object) -> None:
        if self.state is not None:
            self.state = random.getstate()
            random.setstate(self.outer)


def build_model(placement: str, input_shape: Iterable[int], num_classes: int = 10, *, arch: str = "tutorial",
                impl: str = "normlab", dropout: float = 0.2, dense_units: int = 128,
                seed: int | None = None) -> keras.Model:
    """Builds the (uncompiled) Keras model for a placement.

    Args:
        placement: norm specs joined by ``>``, e.g. ``"group(groups=5, axis=3)"``,
            ``"batch>group(groups=5)"`` or ``"batch>none"``.
        input_shape: one example's shape, channels-last, e.g. ``(28, 28, 1)``.
        num_classes: size of the softmax output.
        arch: ``"tutorial"`` or ``"deep"`` (see the module docstring).
        impl: ``"normlab"`` (default) or ``"keras"`` (Keras' built-in layers).
        dropout: dropout rate before the output layer.
        dense_units: width of the hidden dense layer.
        seed: the run's seed (default None: Keras' global seed for everything).
            It seeds the dropout masks, so every configuration of a seed drops the
            same units, and a random stream of the norms' own for their initializers,
            so they leave the convolutions' and dense layers' weights as they are
            without norms.

    Returns:
        A ``keras.Model``; every norm is built on its real input shape, so a norm
        that does not fit (e.g. 3 groups of 10 channels) raises here.

    Example:
        >>> from normlab.lab.models import build_model
        >>> m = build_model("batch>group(groups=5)", (28, 28, 1))
        >>> [type(l).__name__ for l in m.layers][1:5]
        ['Conv2D', 'BatchNormalization', 'Conv2D', 'GroupNormalization']
        >>> [type(l).__name__ for l in build_model("batch>none", (28, 28, 1)).layers][1:4]
        ['Conv2D', 'BatchNormalization', 'Conv2D']
    """
    import keras

    specs = norm_specs(placement, arch)
    stream = _OwnStream(seed)
    with stream:  # validates every spec before anything is built
        norms = [make_norm(spec, impl) for spec in specs]

    def normalize(norm: keras.layers.Layer | None, x: Any) -> Any:
        if norm is None:
            return x
        with stream:  # a layer may draw when it is built, too
            return norm(x)

    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    if arch == "tutorial":
        for norm in norms:
            x = normalize(norm, keras.layers.Conv2D(10, (3, 3))(x))
    else:
        for norm, (filters, stride) in zip(norms, _DEEP_BLOCKS):
            x = keras.layers.Conv2D(filters, (3, 3), strides=stride, padding="same")(x)
            x = keras.layers.Activation("relu")(normalize(norm, x))
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout, seed=seed)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    names = "_".join(n.name if n is not None else "none" for n in norms)
    return keras.Model(inputs, outputs, name=f"{arch}_{impl}_{names}")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Sets ``target``'s variables to ``source``'s, layer by layer (same architecture).

    Within a layer, variables are matched by name, or in order when the names differ
    (Keras' RMSNormalization calls normlab's ``gamma`` ``scale``); shapes must agree.

    Raises:
        ValueError: the models' layers or variables do not correspond.
    """
    if len(source.layers) != len(target.layers):
        raise ValueError(f"Invalid `target`: expected {len(source.layers)} layers like the "
                         f"source model. Received: {len(target.layers)} layers.")
    for a, b in zip(source.layers, target.layers):
        va, vb = list(a.weights), list(b.weights)
        names_a, names_b = [v.name for v in va], [v.name for v in vb]
        if sorted(names_a) == sorted(names_b):
            by_name = {v.name: v for v in va}
            pairs = [(by_name[v.name], v) for v in vb]
        else:
            pairs = list(zip(va, vb))
        if len(va) != len(vb) or any(tuple(x.shape) != tuple(y.shape) for x, y in pairs):
            raise ValueError(
                f"Invalid `target`: expected {type(b).__name__} to hold the variables of "
                f"{type(a).__name__}. Received: {names_b} for {names_a}. The two layers cannot "
                "start from the same weights.")
        for x, y in pairs:
            y.assign(x.numpy())  # a copy: JAX's training step donates the buffers it was given


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """``{"trainable": ..., "non_trainable": ...}`` scalar counts of a built model."""
    import math

    def count(weights: Iterable[Any]) -> int:
        return int(sum(math.prod(int(d) for d in w.shape) for w in weights))

    return {"trainable": count(model.trainable_weights),
            "non_trainable": count(model.non_trainable_weights)}
