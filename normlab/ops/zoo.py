"""Former home of the wider zoo of ops, kept as an alias.

Each family now has its own module, mirroring ``normlab.layers``
(:mod:`~normlab.ops.rms_norm`, :mod:`~normlab.ops.filter_response_norm`,
:mod:`~normlab.ops.evo_norm`, :mod:`~normlab.ops.switchable_norm`,
:mod:`~normlab.ops.local_response_norm`, :mod:`~normlab.ops.batch_norm`) and
the argument checks are in :mod:`normlab.ops.validate`. Import the ops from
:mod:`normlab.ops`.
"""

from __future__ import annotations

from normlab.ops.batch_norm import ghost_batch_norm
from normlab.ops.batch_renorm import batch_renorm
from normlab.ops.evo_norm import evo_norm_b0, evo_norm_s0
from normlab.ops.filter_response_norm import filter_response_norm, frn_axes, tlu
from normlab.ops.local_response_norm import local_response_norm
from normlab.ops.rms_norm import rms_norm
from normlab.ops.switchable_norm import switchable_norm
from normlab.ops.validate import check_positive_int, check_real, check_renorm_clipping

__all__ = [
    "batch_renorm", "check_positive_int", "check_real", "check_renorm_clipping", "evo_norm_b0",
    "evo_norm_s0", "filter_response_norm", "frn_axes", "ghost_batch_norm", "local_response_norm",
    "rms_norm", "switchable_norm", "tlu",
]
