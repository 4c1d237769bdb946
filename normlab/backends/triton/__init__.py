"""Fused Triton kernels for the torch fast paths on CUDA tensors.

Channels-last group and instance norm (``(N, *spatial, C)``, normalized
over groups of the last axis) and layer and RMS norm over trailing axes,
forward and backward (``dx``, ``dgamma``, ``dbeta``), for float32, float16
and bfloat16 inputs with float32 statistics. Each entry point has the hook
signature of :mod:`normlab.backends` and returns None (declines) where it
does not apply: a CPU tensor (unless :func:`interpret_on_cpu` and Triton's
interpreter), another dtype or layout, a non-contiguous tensor, a group or
row too wide for the block strategy, or Triton not installed.

Numerics (the policy of :mod:`normlab.ops.moments`, kept inside the
kernels): every slice is taken about a shift, its first element, and its
variance is the mean squared deviation from the residuals' own mean (two
passes in registers, or Chan's merge of per-tile two-pass statistics),
never ``E[x^2] - E[x]^2``; the apply step subtracts the shift, then the
residuals' mean. Nothing reads a tensor's value on the host; parameter
gradients are reduced in two deterministic stages (per-program partial
sums in a workspace, then one sum), without atomics.

``docs/gpu.md`` describes the kernels, their tests and the benchmark.
"""

from normlab.backends.triton.channels_last import group_norm
from normlab.backends.triton.row_norm import layer_norm, rms_norm
from normlab.backends.triton.runtime import available, interpret_on_cpu

__all__ = ["available", "group_norm", "interpret_on_cpu", "layer_norm", "rms_norm"]
