"""Parity of the kernels the small inputs of ``test_fast_paths`` never reach.

The same comparison as there (fast path against the general path and the
float64 closed form, outputs and gradients), for kernels chosen by size or
environment rather than by layout:

* TensorFlow's fused kernels (batch norm in training, layer and RMS norm's
  affine step), which serve inputs of at least ``FUSED_MIN_ELEMENTS`` elements;
* torch's ATen kernels, which serve where normlab's compiled CPU kernels do
  not (``NORMLAB_CPU_KERNELS=0``, no compiler, float64), in half precision
  and at an offset of 1e4 too.
"""

from __future__ import annotations

import keras
import pytest

from tests.backends.test_fast_paths import CASES, MODES, _check

BACKEND = keras.backend.backend()

#: dtype and offset: float32 at offsets around which float32 holds the data
#: to 1 and 1/16, half precision at offsets of a few hundred of its spacings.
VARIANTS = [("float32", 0.0), ("float32", 1e4), ("float32", 1e6), ("float16", 500.0), ("bfloat16", 50.0)]


@pytest.fixture
def fused_everywhere(monkeypatch):
    """TensorFlow's fused kernels for inputs of any size (graphs traced for eager calls cleared)."""
    from normlab.backends import tensorflow as hooks
    from normlab.backends import tensorflow_stats

    monkeypatch.setattr(tensorflow_stats, "FUSED_MIN_ELEMENTS", 0)
    for hook in (hooks.layer_norm, hooks.rms_norm, hooks.batch_norm_train):
        hook.clear()
    yield
    for hook in (hooks.layer_norm, hooks.rms_norm, hooks.batch_norm_train):
        hook.clear()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,offset", VARIANTS)
@pytest.mark.parametrize("case", ["bn-nhwc", "bn-rank2", "ln-last", "rms-last"])
def test_tensorflow_fused_kernels(case, dtype, offset, mode, fused_everywhere):
    _check(case, dtype, offset, mode=mode)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize("case", ["bn-nhwc", "ln-last"])
def test_tensorflow_fused_kernels_with_an_outlier_first(case, fused_everywhere):
    """Each slice's first element, the shift of the statistics, far out."""
    _check(case, "float32", 1e6, outlier=1e4)


@pytest.mark.parametrize("case", ["bn-nhwc", "ln-last", "rms-last"])
def test_the_fused_kernel_runs(case, fused_everywhere):
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's fused kernels")
    import tensorflow as tf

    from tests.backends.test_fast_paths import _apply

    x = tf.random.normal(CASES[case][1])
    gamma, beta = (tf.random.normal(CASES[case][1][-1:]) for _ in range(2))

    def step(t):  # recorded, as a training step is (RMS norm's hook serves no graph that differentiates nothing)
        with tf.GradientTape() as tape:
            tape.watch(t)
            return _apply(case, t, gamma, beta)[0]

    graph = tf.function(step).get_concrete_function(x).graph
    assert any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


@pytest.mark.skipif(BACKEND != "torch", reason="torch's ATen kernels")
@pytest.mark.parametrize("dtype,offset", [v for v in VARIANTS if v[1] != 1e6])  # 1e6: test_fast_paths
@pytest.mark.parametrize("case", ["gn-nhwc", "gn-nchw", "in-nchw", "ln-last", "bn-nhwc", "bn-nchw", "bn-nhwc-c6"])
def test_torch_aten_kernels(case, dtype, offset, monkeypatch):
    from normlab.backends import cpu

    monkeypatch.setenv("NORMLAB_CPU_KERNELS", "0")
    assert cpu.library() is None
    _check(case, dtype, offset)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's ATen kernels")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("affine", ["gamma", "beta"])
@pytest.mark.parametrize("case", ["gn-nhwc", "gn-nchw", "in-nchw", "ln-last", "bn-nhwc", "bn-nchw"])
def test_torch_aten_kernels_with_one_parameter(case, affine, dtype, monkeypatch):
    """ATen's group-norm backward fails without a weight where beta's gradient is asked for
    ("tensor does not have a device", torch 2.13): beta's gradient is summed by normlab there."""
    monkeypatch.setenv("NORMLAB_CPU_KERNELS", "0")
    _check(case, dtype, 1e4, affine=affine)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["bn-nhwc", "ln-last", "rms-last"])
def test_tensorflow_float64_at_the_fused_size(case, mode, fused_everywhere):
    """The fused kernels take no float64: float64 inputs of the size they
    serve take the composite formulation, and keep float64's digits."""
    _check(case, "float64", 1e6, mode=mode)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize("mode", MODES)
def test_tensorflow_channels_first_batch_norm_at_the_fused_size(mode, fused_everywhere, monkeypatch):
    """The fused kernel is channels-last: a channels-first input whose last
    axis is a whole number of its channel blocks takes the composite path."""
    monkeypatch.setitem(CASES, "bn-nchw-c8", ("batch", (4, 6, 3, 8), 1, None))
    _check("bn-nchw-c8", "float32", 1e4, mode=mode)
