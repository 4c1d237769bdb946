"""normlab's numerics core: one statistics kernel (:mod:`~normlab.ops.moments`),
one apply step (:mod:`~normlab.ops.normalize`), and the functional
normalization ops built from them, one module per norm family as in
:mod:`normlab.layers`. Argument checks are in :mod:`~normlab.ops.validate`,
axis and shape helpers in :mod:`~normlab.ops.axes`."""

from __future__ import annotations

from normlab.ops.adaptive_instance_norm import adaptive_instance_norm
from normlab.ops.batch_norm import batch_norm, ghost_batch_norm
from normlab.ops.batch_renorm import batch_renorm
from normlab.ops.dynamic_tanh import dynamic_tanh
from normlab.ops.evo_norm import evo_norm_b0, evo_norm_s0
from normlab.ops.filter_response_norm import filter_response_norm, tlu
from normlab.ops.group_norm import group_norm, instance_norm
from normlab.ops.layer_norm import layer_norm
from normlab.ops.local_response_norm import local_response_norm
from normlab.ops.moments import mean_square, moments, shifted_moments, stats_dtype
from normlab.ops.normalize import normalize
from normlab.ops.rms_norm import rms_norm
from normlab.ops.switchable_norm import switchable_norm
from normlab.ops.weights import power_iteration, spectral_norm, standardize_weight, weight_norm

__all__ = [
    "adaptive_instance_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "mean_square",
    "moments",
    "normalize",
    "shifted_moments",
    "stats_dtype",
    "batch_renorm",
    "dynamic_tanh",
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
