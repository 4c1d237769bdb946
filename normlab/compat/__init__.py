"""Loading models written with other libraries' normalization layers.

* :mod:`normlab.compat.tfa`: TensorFlow Addons (``Addons>GroupNormalization``
  and friends) configs, JSON and legacy ``.h5`` files, loaded with normlab's
  layers on any Keras 3 backend, without TensorFlow Addons installed.
"""

from __future__ import annotations
