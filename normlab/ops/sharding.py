"""JAX's explicit sharding (sharding in types): what the ops do differently
where ``jax.make_mesh(..., axis_types=(AxisType.Explicit,))`` splits an
axis of their input over devices.

There a slice of one element along a split axis, and a reshape that moves
elements between devices, are type errors rather than implicit transfers.
The ops take their shifts by selecting sums instead of slices
(:mod:`normlab.ops.samples`), the JAX fast paths decline, and ghost batches
say how they are laid out. Every other tensor, and every other backend,
takes the plain path: these functions answer "nothing split" there.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from normlab.types import Tensor


def split_axes(x: Tensor) -> frozenset[int]:
    """The axes of ``x`` that JAX's explicit sharding splits over devices;
    empty for every other tensor and backend."""
    spec = _spec(x)
    if spec is None:
        return frozenset()
    explicit = _explicit_names(x)
    return frozenset(a for a, entry in enumerate(spec) if explicit.intersection(_names(entry)))


def ghost_split(x: Tensor, size: int) -> Tensor:
    """``x``, whose batch axis explicit sharding splits, as ``(ghosts, size,
    *x.shape[1:])``. Where the devices along the batch divide the ghost
    batches, each device keeps its own ghost batches (no transfer); else
    the batch is gathered first (each ghost batch then spans devices, which
    a reshape cannot express)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    spec = _padded_spec(x)
    ghosts = x.shape[0] // size
    mesh_shape = dict(jax.typeof(x).sharding.mesh.shape)
    devices = math.prod(mesh_shape[name] for name in _names(spec[0]))
    if ghosts % devices == 0:
        return jnp.reshape(x, (ghosts, size) + tuple(x.shape[1:]), out_sharding=PartitionSpec(spec[0], None, *spec[1:]))
    gathered = jax.sharding.reshard(x, PartitionSpec(None, *spec[1:]))
    return jnp.reshape(gathered, (ghosts, size) + tuple(x.shape[1:]))


def ghost_merge(y: Tensor, like: Tensor) -> Tensor:
    """Ghost batches ``y`` merged back to the shape of ``like``: the batch split
    as ``like``'s, the other axes as ``y``'s (a ``gamma`` split over a model
    axis splits the channels of ``y``, which a merge keeps)."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    spec = _padded_spec(y)
    return jnp.reshape(y, tuple(like.shape), out_sharding=PartitionSpec(_padded_spec(like)[0], *spec[2:]))


def laid_out_as(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (of ``like``'s shape) in the sharding of ``like``."""
    import jax
    from jax.sharding import PartitionSpec

    return jax.sharding.reshard(t, PartitionSpec(*_padded_spec(like)))


def _spec(x: Tensor) -> tuple[Any, ...] | None:
    if keras.backend.backend() != "jax":
        return None
    import jax

    sharding = getattr(getattr(jax, "typeof", lambda _: None)(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    return tuple(spec) if spec and getattr(sharding, "mesh", None) is not None else None


def _padded_spec(x: Tensor) -> tuple[Any, ...]:
    spec = _spec(x) or ()
    return spec + (None,) * (len(x.shape) - len(spec))


def _explicit_names(x: Tensor) -> set[str]:
    import jax

    mesh = jax.typeof(x).sharding.mesh
    return {name for name, kind in zip(mesh.axis_names, getattr(mesh, "axis_types", ()))
            if getattr(kind, "name", "") == "Explicit"}


def _names(entry: Any) -> tuple[str, ...]:
    """The mesh axes one entry of a ``PartitionSpec`` names (none, one or several)."""
    if entry is None:
        return ()
    return tuple(e for e in entry if e is not None) if isinstance(entry, tuple) else (entry,)
