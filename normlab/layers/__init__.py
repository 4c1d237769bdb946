"""Keras 3 normalization layers, one per module, each a thin shell over :mod:`normlab.ops`."""

from __future__ import annotations

from normlab.layers.adaptive_instance_norm import AdaptiveInstanceNormalization
from normlab.layers.base import Normalization
from normlab.layers.batch_norm import BatchNormalization
from normlab.layers.dynamic_tanh import DynamicTanh
from normlab.layers.evo_norm import EvoNormB0, EvoNormS0
from normlab.layers.filter_response_norm import TLU, FilterResponseNormalization
from normlab.layers.group_norm import GroupNormalization
from normlab.layers.instance_norm import InstanceNormalization
from normlab.layers.layer_norm import LayerNormalization
from normlab.layers.local_response_norm import LocalResponseNormalization
from normlab.layers.rms_norm import RMSNormalization
from normlab.layers.scaled_std_conv import ScaledStdConv1D, ScaledStdConv2D, ScaledStdConv3D
from normlab.layers.spectral_norm import SpectralNormalization
from normlab.layers.std_conv import StdConv1D, StdConv2D, StdConv3D
from normlab.layers.switchable_norm import SwitchableNormalization
from normlab.layers.weight_norm import WeightNormalization

__all__ = [
    "AdaptiveInstanceNormalization",
    "BatchNormalization",
    "DynamicTanh",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Normalization",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNormalization",
    "LocalResponseNormalization",
    "RMSNormalization",
    "SwitchableNormalization",
    "TLU",
    "ScaledStdConv1D",
    "ScaledStdConv2D",
    "ScaledStdConv3D",
    "SpectralNormalization",
    "StdConv1D",
    "StdConv2D",
    "StdConv3D",
    "WeightNormalization",
]
