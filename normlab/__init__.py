"""normlab: normalization layers for Keras 3 on TensorFlow, JAX and PyTorch.

Importing normlab registers every layer with Keras' serialization, so
``keras.saving.load_model`` finds them. When no backend is configured and
TensorFlow is not installed, normlab picks an installed backend before Keras
starts (see :mod:`normlab._backend`). Every layer in :mod:`normlab.layers`
is also available here.

>>> import normlab
>>> normlab.GroupNormalization(groups=5, axis=3).groups
5
"""

from __future__ import annotations

from normlab._backend import choose_default_backend
from normlab._version import __version__

choose_default_backend()

from normlab import backends, distributed, layers, ops  # noqa: E402
from normlab.layers import *  # noqa: E402,F401,F403  (every layer, by its class name)
from normlab.registry import get, register, registry  # noqa: E402

__all__ = ["__version__", "backends", "distributed", "get", "layers", "ops", "register", "registry", *layers.__all__]
