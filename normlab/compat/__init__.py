"""Models written with other libraries' normalization layers, moved to normlab's.

* :mod:`normlab.compat.tfa`: TensorFlow Addons (``Addons>GroupNormalization``
  and friends) configs, JSON and legacy ``.h5`` files, loaded with normlab's
  layers on any Keras 3 backend, without TensorFlow Addons installed.
* :mod:`normlab.compat.keras_layers`: a Sequential or functional model built
  with Keras' own normalization layers, converted to normlab's with its
  weights (:func:`normlab.compat.keras_layers.convert`).
"""

from __future__ import annotations
