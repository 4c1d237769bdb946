"""normlab: normalization layers for Keras 3 on TensorFlow, JAX and PyTorch.

>>> import normlab
>>> normlab.GroupNormalization(groups=5, axis=3).groups
5
"""

from normlab import layers, ops
from normlab.layers import (
    BatchNormalization,
    GroupNormalization,
    InstanceNormalization,
    LayerNormalization,
)
from normlab.registry import get, register, registry

__version__ = "0.1.0"

__all__ = [
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "get",
    "layers",
    "ops",
    "register",
    "registry",
]
