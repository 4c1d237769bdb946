"""normlab's numerics core: one statistics kernel, one apply step, and the
functional normalization ops built from them."""

from normlab.ops.functional import batch_norm, group_norm, instance_norm, layer_norm
from normlab.ops.moments import moments, shifted_moments, stats_dtype
from normlab.ops.normalize import normalize

__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "normalize",
    "shifted_moments",
    "stats_dtype",
]
