"""Keras 3 normalization layers, one per module, each a thin shell over :mod:`normlab.ops`."""

from normlab.layers.base import Normalization
from normlab.layers.batch_norm import BatchNormalization
from normlab.layers.group_norm import GroupNormalization
from normlab.layers.instance_norm import InstanceNormalization
from normlab.layers.layer_norm import LayerNormalization

__all__ = [
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Normalization",
]
