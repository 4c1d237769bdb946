"""normlab's numerics core: one statistics kernel, one apply step, and the
functional normalization ops built from them."""

from normlab.ops.functional import batch_norm, group_norm, instance_norm, layer_norm
from normlab.ops.moments import moments, shifted_moments, stats_dtype
from normlab.ops.normalize import normalize
from normlab.ops.zoo import (
    batch_renorm,
    evo_norm_b0,
    evo_norm_s0,
    filter_response_norm,
    ghost_batch_norm,
    local_response_norm,
    rms_norm,
    switchable_norm,
    tlu,
)
from normlab.ops.weights import power_iteration, spectral_norm, standardize_weight, weight_norm

__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "normalize",
    "shifted_moments",
    "stats_dtype",
    "batch_renorm",
    "evo_norm_b0",
    "evo_norm_s0",
    "filter_response_norm",
    "ghost_batch_norm",
    "local_response_norm",
    "rms_norm",
    "switchable_norm",
    "tlu",
    "power_iteration",
    "spectral_norm",
    "standardize_weight",
    "weight_norm",
]
