"""Former home of group/instance/layer/batch norm, kept as an alias.

The ops now live one norm family per module, mirroring ``normlab.layers``:
:mod:`normlab.ops.group_norm`, :mod:`normlab.ops.layer_norm`,
:mod:`normlab.ops.batch_norm`. Import them from :mod:`normlab.ops`.
"""

from __future__ import annotations

from normlab.ops.batch_norm import batch_norm
from normlab.ops.group_norm import group_norm, instance_norm
from normlab.ops.layer_norm import layer_norm

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm"]
