"""normlab: normalization layers for Keras 3 on TensorFlow, JAX and PyTorch.

Importing ``normlab`` does not import Keras: the layers, ops and registry are
loaded on first use, so tools such as the ``normlab`` command line can choose
the Keras backend (``KERAS_BACKEND``) before Keras starts.

>>> import normlab
>>> normlab.GroupNormalization(groups=5, axis=3).groups
5
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "layers": ("normlab.layers", None),
    "ops": ("normlab.ops", None),
    "backends": ("normlab.backends", None),
    "BatchNormalization": ("normlab.layers", "BatchNormalization"),
    "GroupNormalization": ("normlab.layers", "GroupNormalization"),
    "InstanceNormalization": ("normlab.layers", "InstanceNormalization"),
    "LayerNormalization": ("normlab.layers", "LayerNormalization"),
    "get": ("normlab.registry", "get"),
    "register": ("normlab.registry", "register"),
    "registry": ("normlab.registry", "registry"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'normlab' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
