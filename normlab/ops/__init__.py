"""normlab's numerics core: one statistics kernel (:mod:`~normlab.ops.moments`),
one apply step (:mod:`~normlab.ops.normalize`), and the functional
normalization ops built from them, one module per norm family as in
:mod:`normlab.layers`. Argument checks are in :mod:`~normlab.ops.validate`,
axis and shape helpers in :mod:`~normlab.ops.axes`. On ``keras.Input``'s
symbolic tensors each op adds a node to the functional graph
(:mod:`~normlab.ops.symbolic`)."""

from __future__ import annotations

from normlab.ops.adaptive_instance_norm import adaptive_instance_norm as _adaptive_instance_norm
from normlab.ops.batch_norm import batch_norm as _batch_norm
from normlab.ops.batch_norm import ghost_batch_norm as _ghost_batch_norm
from normlab.ops.batch_renorm import batch_renorm as _batch_renorm
from normlab.ops.dynamic_tanh import dynamic_tanh as _dynamic_tanh
from normlab.ops.evo_norm import evo_norm_b0 as _evo_norm_b0
from normlab.ops.evo_norm import evo_norm_s0 as _evo_norm_s0
from normlab.ops.filter_response_norm import filter_response_norm as _filter_response_norm
from normlab.ops.filter_response_norm import tlu as _tlu
from normlab.ops.group_norm import group_norm as _group_norm
from normlab.ops.group_norm import instance_norm as _instance_norm
from normlab.ops.layer_norm import layer_norm as _layer_norm
from normlab.ops.local_response_norm import local_response_norm as _local_response_norm
from normlab.ops.moments import mean_square as _mean_square
from normlab.ops.moments import moments as _moments
from normlab.ops.moments import shifted_moments as _shifted_moments
from normlab.ops.moments import stats_dtype
from normlab.ops.normalize import normalize as _normalize
from normlab.ops.rms_norm import rms_norm as _rms_norm
from normlab.ops.switchable_norm import switchable_norm as _switchable_norm
from normlab.ops.symbolic import NormOp, symbolic
from normlab.ops.weights import power_iteration as _power_iteration
from normlab.ops.weights import spectral_norm as _spectral_norm
from normlab.ops.weights import standardize_weight as _standardize_weight
from normlab.ops.weights import weight_norm as _weight_norm

# On keras.Input's symbolic tensors the ops add a NormOp node, as keras.ops do (see symbolic.py).
adaptive_instance_norm = symbolic(_adaptive_instance_norm)
batch_norm = symbolic(_batch_norm)
ghost_batch_norm = symbolic(_ghost_batch_norm)
batch_renorm = symbolic(_batch_renorm)
dynamic_tanh = symbolic(_dynamic_tanh)
evo_norm_b0 = symbolic(_evo_norm_b0)
evo_norm_s0 = symbolic(_evo_norm_s0)
filter_response_norm = symbolic(_filter_response_norm)
tlu = symbolic(_tlu)
group_norm = symbolic(_group_norm)
instance_norm = symbolic(_instance_norm)
layer_norm = symbolic(_layer_norm)
local_response_norm = symbolic(_local_response_norm)
mean_square = symbolic(_mean_square)
moments = symbolic(_moments)
shifted_moments = symbolic(_shifted_moments)
normalize = symbolic(_normalize)
rms_norm = symbolic(_rms_norm)
switchable_norm = symbolic(_switchable_norm)
power_iteration = symbolic(_power_iteration)
spectral_norm = symbolic(_spectral_norm)
standardize_weight = symbolic(_standardize_weight)
weight_norm = symbolic(_weight_norm)

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
    "NormOp",
]
