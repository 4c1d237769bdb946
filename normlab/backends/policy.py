"""The fast paths' numerics policy: which statistics each backend computes,
about which shift, and why the result is exact. Every bound a fast path
uses is defined here; the backend modules import it.

The general path (:mod:`normlab.ops.moments`) is exact by construction:
two passes, the variance about the residuals' own mean. A fast path
instead forms one-pass statistics (``E[d^2] - E[d]^2``) or runs a fused
kernel whose apply step is folded (``d * a + b``, ``a = rstd * gamma``,
``b = beta - mean * a``) on the residuals ``d = x - s`` of a per-slice shift
``s`` (no gradient flows through it: the result does not depend on it).

**Error model.** For a slice of ``N`` values with mean ``m`` and variance
``v``, both have a relative error of about ``eps * (1 + r)`` (``eps`` the
unit roundoff of the compute dtype), where

    r = (m - s)^2 / (v + epsilon)        (the *offset ratio*)

``E[d^2]`` holds ``v + (m - s)^2`` to ``eps``, and the cancellation in
``E[d^2] - E[d]^2`` loses the factor ``1 + r``; ``d * a`` and ``b`` are each
of size ``sqrt(r)`` against a result of size 1 (measured on ATen's CPU
kernels: their group, layer and batch norm errors grow like this, whole
units off at an offset of 1000 when ``s = 0``). So a formulation is exact
to float rounding exactly when it bounds ``r``, and each fast path does so
without reading a value on the host (no ``.item()``, ``bool(tensor)``,
data-dependent Python branch): the decision is a select inside the graph,
or a shift that needs no decision at all.

**Shifts and bounds.**

* *Plain moments* (``s = 0``): kept where every slice has
  ``r <= MAX_RAW_RATIO`` (JAX, TensorFlow: one ``lax.cond``/``tf.cond``
  in the graph). Their reductions read ``x`` directly, which XLA fuses.
* *A sample* (``s`` an element of each slice, as in the general path): no
  arithmetic forms it, so every fusion that recomputes ``x - s`` gets the
  same bits (a computed shift lets XLA contract ``x - t * (1/n)`` into a
  fused multiply-add in some fusions and not in others: at an offset of
  1e4 one fusion's residuals then differ from another's by 1e-3). But an
  outlier sample has ``r`` up to ``N - 1``: JAX and TensorFlow keep the
  one-pass variance where ``r <= MAX_SHIFT_RATIO`` (error within 17
  roundings) and otherwise take a second, exact pass (a ``cond`` again).
  :func:`stats` is that whole decision, written once for both. Where sums
  err by more than a rounding, 17 of their errors are too many: JAX and
  TensorFlow under XLA take their shifted moments about the plain moments'
  mean instead, computed once as the ``cond``'s operand (a sample within
  :data:`ANCHOR_EPS` roundings of it, a constant slice's value, stays the shift;
  :data:`normlab.backends.jax.REFINED_SHIFT`), and TensorFlow outside XLA
  about a subsample mean (:data:`normlab.backends.tensorflow_stats.REFINED_SHIFT`).
  TensorFlow's channels-last batch norm instead runs its fused NHWC
  kernel on data minus a subsample mean (below): the kernel's variance is
  one-pass under XLA and with oneDNN (about a sample row, a value 300
  standard deviations out put outputs 1.2e-2 off under XLA, 1.1e-4
  eager), and the shift bounds its offset ratio by
  :data:`MAX_SHIFT_RATIO` (``tests/backends/test_kernel_parity.py``:
  offsets to 1e6; ``tests/ops/test_long_reductions.py``: far first values).
* *A subsample mean* (torch): ``s`` the mean of ``k >= N / MAX_SHIFT_RATIO``
  of the slice's values (:func:`subsample_size` of them along one axis:
  every 16th position on TensorFlow and in torch's channels-last data,
  spread over an image rather than its first rows, and the first values of
  a contiguous row in torch's other kernels). By
  Cauchy-Schwarz, ``(s - m)^2 = (sum over the k of (x_i - m) / k)^2 <=
  sum over the k of (x_i - m)^2 / k <= N v / k``, so ``r <= N / k <=
  MAX_SHIFT_RATIO`` for every input, outliers included: the same bound
  as the sample shift's, with no decision to make. Rounding ``s`` to the
  compute dtype moves it by an ulp of the offset, which adds at most
  ``(ulp / std)^2`` to ``r``: below 1 for any slice whose values are not
  all equal at that offset. A constant slice (``v = 0``) gets its value
  as ``s`` exactly, or ``r`` would be ``ulp^2 / epsilon``, unbounded as
  ``epsilon`` shrinks: the subsample is summed in float64 for ATen's
  kernels, about its first value in the compiled layer-norm kernel and
  about a sample of the slice in TensorFlow's (:func:`stats`)
  (``tests/backends/test_constant_slices.py``). Eager torch has no in-graph branch (a
  ``torch.where`` computes both sides; ``torch.cond`` reads its predicate
  on the host), so every torch kernel works about this shift: normlab's
  compiled CPU kernels (:mod:`normlab.backends.cpu`: group and instance
  norm, batch norm and layer norm over trailing axes, in float32, float16
  and bfloat16; RMS norm too, which needs no shift) subtract it as they
  read the data; ATen's kernels, for everything else,
  are handed ``x - s`` by one subtraction (fused with the float16/bfloat16
  upcast where there is one). TensorFlow uses the same shift outside XLA
  for a training step's small inputs, where a ``tf.cond``'s branches cost
  more than the pass over memory they save, and for every input of a graph
  that differentiates nothing (``predict``, an exporter's trace), whose
  ``cond`` full-integer LiteRT quantization calibrates on one branch only
  (:func:`stats` with ``subsample``;
  :data:`normlab.backends.tensorflow_stats.SUBSAMPLE_ELEMENTS`).
* *Given statistics* (batch norm in inference, with the moving
  averages): nothing is reduced and no shift is needed. The apply step
  ``(x - mean) * a + beta`` forms ``x - mean`` first, exact for the same
  reason as the general path's; folding it into ``x * a + (beta - mean *
  a)``, as ATen's and TensorFlow's inference kernels do, rounds at the
  scale of the offset (1e-3 off at 1e4; ``tests/backends/test_cpu_affine.py``).
  The torch hook serves it with the compiled kernels on the CPU;
  TensorFlow's hands its fused NHWC kernel ``x - mean`` and a mean of 0
  (its folding is then exact); JAX fuses the general path's ops. ``x -
  mean`` is written ``x + (mean * -1)``, the same bits, which an exporter's
  converter folds into a preceding layer's bias (it folds no subtraction).
* Under ``torch.compile`` and export the torch hooks decline: the
  compiler then sees the general path's plain differentiable ops, which
  it fuses itself (measured faster than what it makes of the ATen kernels
  it would otherwise decompose; ``benchmarks/README.md``), and an exporter
  never meets a custom ``torch.autograd.Function``. Exporters record layer,
  group and instance norm as ATen's ``layer_norm``/``group_norm`` of ``x``
  less the same subsample-mean shift (:mod:`normlab.backends.torch_export`):
  a runtime's one-pass node is held to the bound above.

**Accumulation.** ATen's CPU kernels accumulate their sums sequentially:
reductions longer than :data:`MAX_REDUCTION` decline there (2e-5
relative at ``2**18`` terms). normlab's compiled kernels sum blocks of at
most 1024 values in float and the block sums in double, so they serve
reductions of any length. XLA reduces pairwise, except TensorFlow's XLA on
the CPU over axes that are not innermost: 1.8e-6 relative at 31744 terms
(the sum of ``(31, 1024, 4)`` over its first two axes, however the axes are
arranged first), which the one-pass cancellation multiplied by ``1 + r``
(batch norm 4e-5 to 1.4e-4 off float64 at an offset of 2 and an outlier
first element, where Keras' two-pass layer is 5e-6 off). TensorFlow's hooks
therefore take a second pass under XLA (``stats(centered=True)``) for slices
of :data:`~normlab.backends.tensorflow_stats.CENTERED_MIN_TERMS` terms or
more: the moments of the residuals about the first pass's mean, which
correct that mean (the residuals' partial sums grow like ``sqrt(N)``, not
``N``) and hold the variance with no cancellation: within 8.5e-7 there. JAX's reductions
err by up to 1.4e-7 relative and keep one pass (a second pass cost its group and
layer norm up to 1.5x), about the plain mean where the plain moments are not kept. TensorFlow outside XLA
sums pairwise over the innermost axes only; over any other axis it adds one
term after another (9e-6 relative at ``2**16`` terms, 3.7e-3 at ``2**22``).
:func:`normlab.ops.sums.total` (the general path's sums, and the hooks'
below the product's size) therefore sums the innermost reduced axes first
(channels-first data's spatial axes), then the others. Its long sums over
those (:data:`~normlab.ops.sums.SEQUENTIAL_SUM_MAX_TERMS` terms or more)
are a batched product with a ones vector, which the matrix kernel blocks
(over leading axes, and in the hooks' channel sums of a ``(N, P, C)`` view:
2e-7 to 9e-7 relative at ``2**20`` terms), or sums over the axes moved
innermost (other axes); shorter ones (from 256 terms) sum blocks of about
``sqrt(R)`` terms, then the block sums (5e-7 relative at 31744 terms, where
one sequential sum is 1.5e-6 to 4.4e-6, which the one-pass variance about
an outlier sample multiplies by up to 17), or, where no block of 16 terms
or more divides the length (a prime), a sum moved innermost. Under XLA the blocked form measured
no better (the same 8e-5 variance error at 31744 terms: its simplifier may
merge the two reductions): the hooks take the second pass above there, and
the general path's sums, which take the blocked form there too, are as
accurate as XLA's reduction (its variance is two-pass already). The
fused batch-norm kernel sums sequentially inside: at 65536 to 100352 values
per channel its outputs are 1e-5 to 2.6e-5 off a float64 reference (Keras'
layer, 9e-6 at 65536), where the composite path's are 3e-6 to 7e-6; it is
kept for being 2x to 2.5x faster there (``tf.function`` training steps,
forward and backward, (64, 32, 32, 64) to (8, 56, 56, 256)).

Statistics are in float32 at least everywhere (float16/bfloat16 are
upcast once, float64 stays float64), as in the general path.

**Helper contract.** Hooks are keyword-only after ``x`` (see
:mod:`normlab.backends`). A backend that uses :func:`stats` passes its
array primitives as an :class:`ArrayOps`; ``sums(t)`` returns
``(reduce(t), reduce(t * t))`` (a backend may form both in one product),
``reduce(t)`` sums each slice keeping the reduced axes, ``sample()``
returns the sample shift broadcastable to ``x``. The result is a
:class:`Stats`; the apply step is ``((x - shift) - mean) * rstd``, or
``x * rstd - mean * rstd`` where ``raw`` is true (``shift`` is 0 there and
``|mean| <= 2 std``, so the folded form is within a few roundings).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

#: Plain one-pass moments (shift 0) are kept while every slice has
#: ``E[x]^2 <= MAX_RAW_RATIO * (var + epsilon)`` (``|mean| <= 2 std``): the
#: one-pass variance is then within 5 roundings and the folded apply step
#: within 3. At ``r`` = 3.96 every output and gradient of the JAX and
#: TensorFlow hooks is within 3.9e-6 of float64 (float32;
#: ``tests/backends/test_policy.py``; 1e-7 to 1.2e-6 about a sample), and
#: data with ``1 < r <= 4`` (an offset of 3 at a spread of 2, say) runs its
#: forward pass 1.5-2.1x faster than about a sample (CPU; group, layer and
#: instance norm, and JAX's batch norm, at ``(8, 56, 56, 256)``).
MAX_RAW_RATIO = 4.0

#: One-pass statistics about a shift are kept while
#: ``(mean - shift)^2 <= MAX_SHIFT_RATIO * (var + epsilon)``: relative error
#: within ``1 + MAX_SHIFT_RATIO`` roundings. A subsample mean of at least
#: ``1 / MAX_SHIFT_RATIO`` of a slice is always within it (Cauchy-Schwarz).
MAX_SHIFT_RATIO = 16.0

#: Where shifted moments are taken about the plain moments' mean (JAX, and
#: TensorFlow under XLA), a sample within this many machine epsilons of that
#: mean (relative) is the shift instead: a constant slice's mean is its value to the last bit
#: only where the sum has no rounding (measured up to 3.7 epsilons off, 2**22
#: values of 1e6 + 0.5), and ``x - shift`` must be 0 exactly there, or the
#: residual is scaled by ``1 / sqrt(epsilon)``
#: (``tests/backends/test_constant_slices.py``). Elsewhere such a sample is
#: within 0.3 of the mean at an offset of 1e4 in float32 (``r <= 0.09`` at a
#: spread of 1).
ANCHOR_EPS = 256

#: Longest reduction handed to ATen's sequentially accumulating CPU kernels:
#: at ``2**16`` terms statistics and parameter gradients are measured within
#: 5e-6 relative, at ``2**18`` only within 2e-5.
MAX_REDUCTION = 2**16


def subsample_size(size: int) -> int:
    """How many of ``size`` values along an axis a subsample-mean shift
    averages: ``ceil(size / MAX_SHIFT_RATIO)``, so that its offset ratio is
    at most :data:`MAX_SHIFT_RATIO` (a Python int: shapes are static here)."""
    return -(-int(size) // int(MAX_SHIFT_RATIO))


class Stats(NamedTuple):
    """Per-slice statistics about a shift, reduced axes kept.

    ``mean`` and ``variance`` are those of ``x - shift`` (the mean of ``x``
    is ``shift + mean``), ``rstd = rsqrt(variance + epsilon)``, and ``raw``
    a boolean scalar tensor: whether the plain moments were kept
    (``shift`` is 0 and every ``|mean| <= 2 std``); the Python bool False
    about a subsample mean, where nothing was decided (see :func:`select`).
    """

    shift: Any
    mean: Any
    variance: Any
    rstd: Any
    raw: Any


class ArrayOps(NamedTuple):
    """The array primitives :func:`stats` needs, from one backend."""

    maximum: Callable
    all: Callable
    any: Callable
    isfinite: Callable
    cond: Callable  # cond(pred, true_fn, false_fn), both without arguments, in the graph
    stop_gradient: Callable
    zeros_like: Callable
    rsqrt: Callable


def shifted_stats(xf, *, shift, sums, reduce, count, epsilon, xp: ArrayOps, centered: bool = False):
    """``(mean, variance)`` of ``xf - shift``: one pass, and a second, exact
    pass (in a ``cond``) only where some slice has an offset ratio above
    :data:`MAX_SHIFT_RATIO` (its shift an outlier); given ``centered``, two
    passes (:func:`moments`). The variance is not clamped at 0 (the caller does)."""
    d = xf - shift
    if centered:
        return moments(d, sums=sums, reduce=reduce, count=count, xp=xp, centered=True, clamp=False)
    mean, var = moments(d, sums=sums, reduce=reduce, count=count, xp=xp, clamp=False)
    far = xp.any(mean * mean > MAX_SHIFT_RATIO * (var + epsilon))

    def two_pass():  # recomputes d: a branch's captured operands are materialized
        r = (xf - shift) - mean
        return reduce(r * r) / count

    return mean, xp.cond(far, two_pass, lambda: var)


def moments(d, *, sums, reduce, count, xp: ArrayOps, centered: bool = False, clamp: bool = True):
    """``(mean, variance)`` of ``d``: one pass (``E[d^2] - E[d]^2``), or given
    ``centered`` two, for reductions that err by more than a rounding: the
    mean, then the moments of the residuals about it, which correct the mean
    (their partial sums grow like ``sqrt(N)``, not ``N``) and hold the
    variance with no cancellation. The variance is clamped at 0 unless
    ``clamp`` is False (:func:`shifted_stats`, whose caller clamps after the
    ``cond`` around it: a ``Max`` inside an ``If`` branch breaks onnxruntime's
    float16 converter)."""
    if centered:
        first = reduce(d) / count
        residual, squares = sums(d - first)
        correction = residual / count
        var = squares / count - correction * correction
        return first + correction, xp.maximum(var, 0.0) if clamp else var
    total, squares = sums(d)
    mean = total / count
    var = squares / count - mean * mean
    return mean, xp.maximum(var, 0.0) if clamp else var


def stats(xf, *, sample, sums, reduce, count, epsilon, xp: ArrayOps,
          subsample: Callable | None = None, centered: bool = False, refine: Callable | None = None) -> Stats:
    """:class:`Stats` of ``xf``: the plain one-pass moments where every slice
    has an offset ratio within :data:`MAX_RAW_RATIO` and all is finite (two
    reductions of ``x`` itself, which XLA fuses into reading it), else
    :func:`shifted_stats` about ``sample()``. Decided in the graph; given
    ``subsample(anchor)`` (each slice's subsample mean, :func:`subsample_size`
    values along one axis, summed about ``anchor = sample()``: a constant
    slice's is its value exactly, where a sum of the values themselves rounds
    at their scale), one-pass moments about it instead, deciding nothing.
    Given ``centered``, every variance is taken about its mean in a second
    pass (see **Accumulation** above). Given ``refine(anchor, mean)`` (of the
    sample and the plain moments' mean), the shifted moments are taken about
    its value: where sums err by more than a rounding, a shift near the mean
    keeps the one-pass error near theirs, where a sample
    ``sqrt(MAX_SHIFT_RATIO)`` standard deviations out multiplies it by up to
    ``1 + MAX_SHIFT_RATIO``."""
    if subsample is not None:
        shift = xp.stop_gradient(subsample(xp.stop_gradient(sample())))
        mean, var = moments(xf - shift, sums=sums, reduce=reduce, count=count, xp=xp, centered=centered)
        return Stats(shift, mean, var, xp.rsqrt(var + epsilon), False)
    mean0, var0 = moments(xf, sums=sums, reduce=reduce, count=count, xp=xp, centered=centered)
    raw = xp.all(mean0 * mean0 <= MAX_RAW_RATIO * (var0 + epsilon)) & xp.all(xp.isfinite(var0))

    def plain():
        return xp.zeros_like(mean0), mean0, var0

    def shifted():
        anchor = xp.stop_gradient(sample())
        shift = anchor if refine is None else xp.stop_gradient(refine(anchor, mean0))
        mean, var = shifted_stats(xf, shift=shift, sums=sums, reduce=reduce, count=count,
                                  epsilon=epsilon, xp=xp, centered=centered)
        return shift, mean, var

    shift, mean, var = xp.cond(raw, plain, shifted)
    var = xp.maximum(var, 0.0)
    return Stats(shift, mean, var, xp.rsqrt(var + epsilon), raw)


def select(raw, plain: Callable, shifted: Callable, xp: ArrayOps):
    """``plain()`` where :class:`Stats` kept the plain moments, else
    ``shifted()``: a ``cond`` in the graph, or only ``shifted()`` where
    ``raw`` is the Python False of the moments about a subsample mean."""
    if raw is False:
        return shifted()
    return xp.cond(raw, plain, shifted)
