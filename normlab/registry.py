"""Build any normalization layer from a short spec string.

A spec is a registered name, optionally called with keyword arguments
written as Python literals::

    normlab.get("group(groups=8)")
    normlab.get("layer(axis=[1, 2, 3], epsilon=1e-5)")
    normlab.get("bn")                       # aliases work too

:func:`registry` lists every name with its aliases, arguments and kind, and
the lab's model specs are built from it, so a newly registered norm is usable
everywhere at once. The lab places only ``"activation"`` norms; the kernel
wrappers (``get("weight_norm", layer=...)``) and the two-input AdaIN are
built here all the same.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
from typing import Any, Callable, Sequence

import keras

from normlab import layers
from normlab.ops.validate import ArgumentTypeError

_NORMS: dict[str, "Entry"] = {}
_ALIASES: dict[str, str] = {}


#: How a registered norm enters a model: ``"activation"``, a layer called on
#: another layer's output; ``"kernel"``, a wrapper that normalizes the kernel of
#: the layer it is built around (``get(name, layer=...)``); ``"two-input"``, a
#: layer called on a list of two tensors (AdaIN's ``[content, style]``).
KINDS = ("activation", "kernel", "two-input")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered norm: its canonical name, how to build it, its aliases, and its kind (:data:`KINDS`)."""

    name: str
    factory: Callable[..., keras.layers.Layer]
    aliases: tuple[str, ...] = ()
    summary: str = ""
    kind: str = "activation"

    def arguments(self) -> dict[str, object]:
        """The keyword arguments a spec may set, with their defaults: the
        factory's own and, for a layer class whose ``__init__`` passes
        ``**kwargs`` on, its base classes' (up to Keras' ``Layer``, whose own
        arguments :func:`get` then accepts as well)."""
        return _accepted(self.factory)[0]

    def takes_any_argument(self) -> bool:
        """Whether the factory passes keyword arguments it does not name to
        something :func:`get` cannot see (a function's ``**kwargs``): it then
        checks them itself."""
        return _accepted(self.factory)[1]


def _accepted(factory: Callable[..., object]) -> tuple[dict[str, object], bool]:
    """``(arguments with defaults, whether **kwargs reach an unseen callee)`` of a factory."""
    arguments, open_, _ = _signature(factory)
    return arguments, open_


def _signature(factory: Callable[..., object]) -> tuple[dict[str, object], bool, bool]:
    """:func:`_accepted`'s pair, and whether Keras' ``Layer`` gets the
    factory's ``**kwargs`` (a layer class whose ``__init__`` methods pass them
    on up to it: its own arguments, :data:`_LAYER_ARGUMENTS`, are then taken)."""
    if isinstance(factory, functools.partial):
        arguments, open_, layer = _signature(factory.func)
        return {**arguments, **factory.keywords}, open_, layer
    if not inspect.isclass(factory):
        return (*_parameters(inspect.signature(factory), skip_first=False), False)
    found: dict[str, object] = {}
    for cls in inspect.getmro(factory):
        if cls is keras.layers.Layer:
            return found, False, True
        init = vars(cls).get("__init__")
        if init is None:
            continue
        arguments, open_ = _parameters(inspect.signature(init), skip_first=True)
        for key, default in arguments.items():
            found.setdefault(key, default)  # a subclass's defaults win, its arguments listed first
        if not open_:
            return found, False, False
    return found, True, False


def _parameters(signature: inspect.Signature, skip_first: bool) -> tuple[dict[str, object], bool]:
    parameters = list(signature.parameters.values())[1 if skip_first else 0:]
    named = {p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in parameters)


def register(
    name: str, factory: Callable[..., keras.layers.Layer], *, aliases: Sequence[str] = (), summary: str = "",
    kind: str = "activation",
) -> None:
    """Registers ``factory`` under ``name`` (and ``aliases``) for :func:`get` and the lab's ``--norms``.

    Args:
        name: the canonical name, a lowercase Python identifier.
        factory: a layer class or a function returning a new layer; its
            keyword arguments are what a spec may set (with a class's
            ``**kwargs``, its base classes' too; with a function's, any,
            which the layer it builds checks).
        aliases: other names for it, each a lowercase identifier. Default ().
        summary: one line for ``normlab list norms``. Default "" (the
            first line of the factory's docstring; of the function or class
            a ``functools.partial`` calls).
        kind: how it enters a model, one of :data:`KINDS`. Default "activation".

    Example:
        >>> import functools, normlab
        >>> from normlab.registry import register
        >>> register("rms_eps6", functools.partial(normlab.RMSNormalization, epsilon=1e-6), aliases=["rms6"])
        >>> normlab.get("rms6(axis=-1)").epsilon
        1e-06
    """
    if kind not in KINDS:
        raise ValueError(
            f"Invalid `kind`: expected one of {', '.join(map(repr, KINDS))}. Received: kind={kind!r}. "
            "Use 'activation' for a layer called on another layer's output."
        )
    if not callable(factory):
        raise ArgumentTypeError(
            f"Invalid `factory`: expected a callable that returns a layer (a layer class or a function). "
            f"Received: factory={factory!r} of type {type(factory).__name__}. Pass e.g. normlab.GroupNormalization."
        )
    try:
        inspect.signature(factory)
    except (TypeError, ValueError) as exc:  # a builtin or C callable: no signature to read specs against
        raise ArgumentTypeError(
            f"Invalid `factory`: expected a callable with a signature, whose keyword arguments are what a spec "
            f"may set. Received: factory={factory!r} ({exc}). Wrap it in a function, e.g. "
            "def factory(**kwargs): return MyLayer(**kwargs)."
        ) from exc
    if isinstance(aliases, str):
        raise ArgumentTypeError(
            f"Invalid `aliases`: expected a list of names; a string would register each of its letters. "
            f"Received: aliases={aliases!r}. Pass aliases=[{aliases!r}]."
        )
    if not isinstance(aliases, (list, tuple)):
        raise ArgumentTypeError(
            f"Invalid `aliases`: expected a list or tuple of names. Received: aliases={aliases!r} of type "
            f"{type(aliases).__name__}. Pass e.g. aliases=['my_norm'], or leave it out for none."
        )
    if not isinstance(summary, str):
        raise ArgumentTypeError(
            f"Invalid `summary`: expected a string, one line for `normlab list norms`. Received: "
            f"summary={summary!r} of type {type(summary).__name__}. Pass e.g. summary='My norm.', or leave it "
            "out for the first line of the factory's docstring."
        )
    for key in (name, *aliases):
        if not isinstance(key, str) or not key.isidentifier() or key != key.lower():
            raise ValueError(
                f"Invalid `name`: expected a lowercase Python identifier, as specs spell names (get() reads "
                f"'MyNorm(...)' as 'mynorm'). Received: {key!r}. Use e.g. {str(key).lower().replace('-', '_')!r}."
            )
        owner = _ALIASES.get(key)
        if owner is not None and owner != name:
            raise ValueError(
                f"Invalid `name`: expected a name not yet registered. Received: name={key!r}, "
                f"already registered for {owner!r}. Choose another name or alias."
            )
    previous = _NORMS.get(name)
    for key in previous.aliases if previous is not None else ():
        if key not in aliases:  # re-registered without it: the old alias would reach the new factory
            del _ALIASES[key]
    documented = factory
    while isinstance(documented, functools.partial):  # the docstring of what it calls, not functools'
        documented = documented.func
    _NORMS[name] = Entry(name, factory, tuple(aliases), summary or (inspect.getdoc(documented) or "").split("\n")[0],
                         kind)
    for key in (name, *aliases):
        _ALIASES[key] = name


def registry() -> dict[str, Entry]:
    """Every registered norm, by canonical name: a copy, each an :class:`Entry`.

    Example:
        >>> from normlab.registry import registry
        >>> entry = registry()["group"]
        >>> entry.kind, "gn" in entry.aliases, entry.arguments()["groups"]
        ('activation', True, 32)
    """
    return dict(_NORMS)


def names() -> list[str]:
    """Every name :func:`get` accepts (canonical names and aliases), sorted."""
    return sorted(_ALIASES)


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """Splits ``"name(key=value, ...)"`` into the canonical name and its arguments."""
    if not isinstance(spec, str) or not spec.strip():
        raise ArgumentTypeError(
            f"Invalid `spec`: expected a non-empty string such as 'group(groups=8)'. Received: spec={spec!r}."
        )
    node: ast.expr | None
    # Parsed with a "_" in front of the name: an alias may be a Python keyword ("in", instance norm's).
    try:
        node = ast.parse("_" + spec.strip(), mode="eval").body
    except SyntaxError:
        node = None
    kwargs: dict[str, object] = {}
    if isinstance(node, ast.Name):
        key = node.id[1:]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args and all(
        k.arg is not None for k in node.keywords
    ):
        key = node.func.id[1:]
        # Every k.arg is a str here (checked above; None would be a **mapping).
        given = [k.arg for k in node.keywords if k.arg is not None]
        repeated = sorted({a for a in given if given.count(a) > 1})
        if repeated:
            raise ValueError(
                f"Invalid `spec`: expected each argument at most once. Received: spec={spec!r}, "
                f"which gives {', '.join(map(repr, repeated))} more than once. Keep one value each."
            )
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # not a literal, or {[1]: 2}
            node = None
    else:
        node = None
    if node is None:
        raise ValueError(
            "Invalid `spec`: expected a norm name, optionally with keyword arguments given as "
            f"Python literals, such as 'group(groups=8)' or 'layer(axis=[1, 2])'. Received: spec={spec!r}."
        )
    key = key.lower()
    if key not in _ALIASES:
        close = difflib.get_close_matches(key, names(), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Invalid `spec`: unknown norm {key!r}. Received: spec={spec!r}.{hint} "
            f"Valid names: {', '.join(names())}."
        )
    return _ALIASES[key], kwargs


def get(spec: str, **overrides: Any) -> keras.layers.Layer:
    """Builds a new normalization layer from a spec string.

    Args:
        spec: a registered name or alias, optionally with keyword arguments,
            e.g. ``"group(groups=8)"``, ``"bn"``, ``"none"``.
        **overrides: further keyword arguments; they win over the spec's.

    Returns:
        A new, unbuilt Keras layer.

    Example:
        >>> import normlab
        >>> layer = normlab.get("group(groups=5, axis=3)")
        >>> type(layer).__name__, layer.groups, layer.axis
        ('GroupNormalization', 5, 3)
    """
    name, kwargs = parse_spec(spec)
    kwargs.update(overrides)
    entry = _NORMS[name]
    accepted, takes_any, layer_class = _signature(entry.factory)
    unknown = sorted(set(kwargs) - set(accepted) - (_LAYER_ARGUMENTS if layer_class else set()))
    if unknown and not takes_any:
        given = [f"{k}={overrides[k]!r}" for k in unknown if k in overrides]
        close = [m for k in unknown for m in difflib.get_close_matches(k, list(accepted), n=1)]
        raise ValueError(
            f"Invalid `spec`: {name!r} has no argument {', '.join(map(repr, unknown))}. "
            f"Received: spec={spec!r}" + (f" and {', '.join(given)} (keyword arguments)" if given else "") + ". "
            + (f"Did you mean {' or '.join(map(repr, close))}? " if close else "")
            + (f"Valid arguments: {', '.join(accepted)}." if accepted
               else f"{name!r} takes no arguments: write {name!r}.")
        )
    layer = entry.factory(**kwargs)
    if not isinstance(layer, keras.layers.Layer):
        raise ArgumentTypeError(
            f"Invalid `factory` of {name!r}: expected it to return a Keras layer. Received: {layer!r} of type "
            f"{type(layer).__name__}. Register a layer class or a function that returns a layer."
        )
    return layer


#: What every Keras layer takes (``keras.layers.Layer``'s keyword arguments: ``name``,
#: ``dtype``, ``trainable``, ``activity_regularizer``, ``autocast``).
_LAYER_ARGUMENTS = {p.name for p in inspect.signature(keras.layers.Layer.__init__).parameters.values()
                    if p.kind == p.KEYWORD_ONLY} | {"name", "dtype", "trainable"}


register("group", layers.GroupNormalization, aliases=("gn", "groupnorm", "group_norm"))
register("instance", layers.InstanceNormalization, aliases=("in", "instancenorm", "instance_norm"))
register("layer", layers.LayerNormalization, aliases=("ln", "layernorm", "layer_norm"))
register("batch", layers.BatchNormalization, aliases=("bn", "batchnorm", "batch_norm"))
register("none", keras.layers.Identity, aliases=("identity",),
         summary="No normalization: passes its input through unchanged.")
register("rms", layers.RMSNormalization, aliases=("rmsnorm", "rms_norm"))
register("frn", layers.FilterResponseNormalization, aliases=("filter_response", "filter_response_norm"))
register("evonorm_b0", layers.EvoNormB0, aliases=("evob0", "evo_b0"))
register("evonorm_s0", layers.EvoNormS0, aliases=("evos0", "evo_s0"))
register("switchable", layers.SwitchableNormalization, aliases=("switchnorm", "switchable_norm"))
register("lrn", layers.LocalResponseNormalization, aliases=("local_response", "local_response_norm"))
register("dyt", layers.DynamicTanh, aliases=("dynamic_tanh", "dynamictanh"))
register("adain", layers.AdaptiveInstanceNormalization, aliases=("adaptive_instance", "adaptive_instance_norm"),
         kind="two-input")
# Kernel reparametrizations, not activation norms: their factories take the layer to
# modify, e.g. normlab.get("weight_norm", layer=keras.layers.Conv2D(16, 3)).
register("weight_norm", layers.weight_norm.weight_normalization, aliases=("wn", "weightnorm"), kind="kernel")
register("spectral_norm", layers.spectral_norm.spectral_normalization, aliases=("sn", "spectralnorm"), kind="kernel")
register("weight_std", layers.std_conv.weight_standardization, aliases=("ws", "std_conv", "weight_standardization"),
         kind="kernel")
register("scaled_weight_std", layers.scaled_std_conv.scaled_weight_standardization,
         aliases=("sws", "scaled_std_conv"), kind="kernel")
