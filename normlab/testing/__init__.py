"""Test oracles and harness for normlab and for code built on it.

* :mod:`normlab.testing.reference`: float64 NumPy references for every norm.
* :mod:`normlab.testing.harness`: :func:`run_layer_test`, the checks every
  normalization layer must pass (shapes, weights, config, serialization,
  training, mixed precision).
"""

from __future__ import annotations
