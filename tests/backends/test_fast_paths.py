"""Parity of each backend's fast paths with the general path and with a
float64 closed form: outputs, batch statistics and gradients with respect
to x, gamma and beta, over layouts, dtypes, large offsets and (on JAX and
TensorFlow) compiled functions.

Runs in the process of the Keras backend under test; the hooks of other
backends are never imported.
"""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab import backends
from normlab import ops as nops
from tests.backends._closed_form import normalize_and_vjp

BACKEND = keras.backend.backend()
try:
    HOOKS = importlib.import_module(f"normlab.backends.{BACKEND}")
except ModuleNotFoundError:  # a backend without fast paths
    HOOKS = None

pytestmark = pytest.mark.skipif(HOOKS is None, reason=f"no fast paths for {BACKEND}")

EPSILON = 1e-3

# id: (op, shape, axis, groups). Groups are already resolved, as the ops pass them.
CASES = {
    "gn-nhwc": ("group", (2, 5, 6, 8), 3, 4),
    "gn-nchw": ("group", (2, 8, 5, 6), 1, 2),
    "in-nhwc": ("group", (2, 5, 6, 8), 3, 8),
    # 2304 positions: torch's instance norm forward by ATen's group-norm
    # kernel rather than one batch norm per sample (small samples).
    "in-nhwc-large": ("group", (2, 48, 48, 8), 3, 8),
    "in-nchw": ("group", (3, 4, 7), 1, 4),
    "gn-rank2": ("group", (4, 6), 1, 3),
    "gn-rank5": ("group", (2, 3, 4, 2, 6), 4, 3),
    "gn-middle": ("group", (2, 3, 8, 4), 2, 4),
    "ln-last": ("layer", (3, 7, 16), [2], None),
    "ln-last2": ("layer", (2, 3, 4, 10), [2, 3], None),
    "ln-first": ("layer", (3, 7, 16), [1], None),
    "ln-split": ("layer", (2, 4, 5, 6), [1, 3], None),
    "rms-last": ("rms", (3, 7, 16), [2], None),
    "rms-last2": ("rms", (2, 3, 4, 10), [2, 3], None),
    "rms-first": ("rms", (3, 7, 16), [1], None),
    "bn-nhwc": ("batch", (4, 5, 3, 8), 3, None),
    "bn-nhwc-c6": ("batch", (4, 5, 3, 6), 3, None),
    "bn-nchw": ("batch", (4, 6, 5, 3), 1, None),
    "bn-rank2": ("batch", (16, 8), 1, None),
    "bn-middle": ("batch", (3, 4, 6, 5), 2, None),
}

# The torch hooks serve channels-first and channels-last layouts and layer
# and RMS norm over trailing axes (channels-last batch norm with a channel count that
# is not a multiple of 8 by composite ops: ATen's kernel is scalar there);
# everything else goes to the general path. TensorFlow's RMS norm hook serves
# trailing axes only (and no graph outside XLA that differentiates nothing: test_tf_small_inputs.py).
DECLINED = {
    "torch": {"gn-middle", "ln-first", "ln-split", "bn-middle", "rms-first"},
    "jax": set(),
    "tensorflow": {"rms-first"},
}.get(BACKEND, set())

# Relative to the largest magnitude of each result: a half-precision result
# rounded once from float32 is within one spacing of [1, 2) (2**-10, 2**-7);
# the largest measured are 5.4e-4 (float16) and 5.2e-3 (bfloat16), both dx.
TOLERANCE = {"float64": 1e-9, "float32": 2e-5, "float16": 1e-3, "bfloat16": 8e-3}
# dgamma and dbeta: float32 whatever x is, but sums over the batch of dy rounded to x's
# dtype (as autograd hands a half-precision output's gradient): many roundings, not one.
PARAM_TOLERANCE = {"float64": 2e-5, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}

# TensorFlow takes small inputs about a subsample mean outside XLA, larger
# ones with its conditional statistics (normlab.backends.tensorflow_stats):
# every case here is small, so each test runs with both (the conditional one
# with the channel sums large inputs take, products with a ones vector).
FORMULATIONS = ["subsample", "conditional"] if BACKEND == "tensorflow" else ["default"]


@pytest.fixture(autouse=True, params=FORMULATIONS)
def formulation(request, monkeypatch):
    if request.param == "conditional":
        from normlab.backends import tensorflow as tensorflow_hooks
        from normlab.backends import tensorflow_stats

        monkeypatch.setattr(tensorflow_stats, "SUBSAMPLE_ELEMENTS", 0)
        # ... and channel sums as products with a ones vector, as for large inputs.
        monkeypatch.setattr(tensorflow_hooks, "MATMUL_SUM_MIN_ELEMENTS", 0)
    if BACKEND == "tensorflow":  # graphs traced for eager calls keep the formulation they were traced with
        for hook in (HOOKS.group_norm, HOOKS.layer_norm, HOOKS.rms_norm, HOOKS.batch_norm_train,
                     HOOKS.batch_norm_infer):
            hook.clear()
    return request.param

# Modes per backend, the default first: the eager call and every way a
# Keras model runs the op (jax.jit; tf.function with and without XLA). JAX
# defaults to jit: eager JAX compiles every primitive for every new shape.
MODES = {"jax": ["jit", "eager"], "tensorflow": ["eager", "function", "xla"], "torch": ["eager"]}.get(BACKEND, [])


def _param_shape(op, shape, axis):
    return tuple(shape[a] for a in axis) if op in ("layer", "rms") else (shape[axis],)


def _first_of_each_slice(op, shape, axis):
    """The index of the first element of every slice the op normalizes
    (every channel's, for group norm: a whole position), the element the
    general path and the JAX/TensorFlow hooks shift by."""
    if op in ("layer", "rms"):
        return tuple(0 if i in axis else slice(None) for i in range(len(shape)))
    keep = (0, axis) if op == "group" else (axis,)
    return tuple(slice(None) if i in keep else 0 for i in range(len(shape)))


def _inputs(case, offset, seed=0, outlier=None):
    """``x`` of N(0.5, 2) plus ``offset``; with ``outlier``, the first
    element of every slice is ``offset + outlier`` instead."""
    op, shape, axis, groups = CASES[case]
    rng = np.random.default_rng(seed)
    x = offset + rng.normal(0.5, 2.0, size=shape)
    if outlier is not None:
        x[_first_of_each_slice(op, shape, axis)] = offset + outlier
    dy = rng.normal(size=shape)
    pshape = _param_shape(op, shape, axis)
    gamma = rng.uniform(0.5, 1.5, size=pshape).astype("float32")
    beta = rng.normal(size=pshape).astype("float32")
    return x, dy, gamma, beta


def _tensor(a, dtype):
    return ops.cast(ops.convert_to_tensor(np.asarray(a, "float64" if dtype == "float64" else "float32")), dtype)


def _np(t):
    if t is None:
        return None
    if hasattr(t, "dtype") and "bfloat16" in str(t.dtype):
        t = ops.cast(t, "float32")
    return np.asarray(ops.convert_to_numpy(t), np.float64)


def _apply(case, x, gamma, beta):
    op, _, axis, groups = CASES[case]
    if op == "group":
        return nops.group_norm(x, groups, axis, gamma=gamma, beta=beta, epsilon=EPSILON), None
    if op == "layer":
        return nops.layer_norm(x, axis, gamma=gamma, beta=beta, epsilon=EPSILON), None
    if op == "rms":
        return nops.rms_norm(x, axis, gamma=gamma, beta=beta, epsilon=EPSILON), None
    y, mean, variance = nops.batch_norm(
        x, axis=axis, gamma=gamma, beta=beta, epsilon=EPSILON, training=True, return_stats=True
    )
    return y, (mean, variance)


_COMPILED = {}


def _compiled(key, make):
    """One compiled function per case, mode and path, reused across offsets
    and dtypes (JAX and TensorFlow retrace only for new shapes/dtypes)."""
    if key not in _COMPILED:
        _COMPILED[key] = make()
    return _COMPILED[key]


def _run(case, x, dy, gamma, beta, mode):
    """Forward and gradients on the active backend, as float64 NumPy."""
    if BACKEND == "torch":
        import torch

        x = x.detach().requires_grad_(True)
        params = [p.detach().requires_grad_(True) if p is not None else None for p in (gamma, beta)]
        y, stats = _apply(case, x, *params)
        y.backward(dy.to(y.dtype))
        grads = [x.grad] + [p.grad if p is not None else None for p in params]
        with torch.no_grad():
            return _collect(y.detach(), stats, grads)
    if BACKEND == "jax":
        import jax

        def full(x, params, dy):
            y, vjp, stats = jax.vjp(lambda x, p: _apply(case, x, *p), x, params, has_aux=True)
            dx, dparams = vjp(dy.astype(y.dtype))
            return y, stats, dx, dparams

        if mode == "jit":
            full = _compiled(("jax", case, backends.enabled()), lambda: jax.jit(full))
        y, stats, dx, (dgamma, dbeta) = full(x, (gamma, beta), dy)
        return _collect(y, stats, [dx, dgamma, dbeta])
    import tensorflow as tf

    def full(x, gamma, beta, dy):
        sources = [t for t in (x, gamma, beta) if t is not None]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            y, stats = _apply(case, x, gamma, beta)
        grads = tape.gradient(y, sources, output_gradients=tf.cast(dy, y.dtype))
        return y, stats, grads

    if mode != "eager":
        from normlab.backends import tensorflow_stats

        full = _compiled(("tf", case, mode, backends.enabled(), tensorflow_stats.SUBSAMPLE_ELEMENTS),
                         lambda: tf.function(full, jit_compile=(mode == "xla")))
    y, stats, grads = full(x, gamma, beta, dy)
    grads = list(grads)
    ordered = [grads.pop(0)] + [grads.pop(0) if p is not None else None for p in (gamma, beta)]
    return _collect(y, stats, ordered)


def _collect(y, stats, grads):
    out = {"y": _np(y), "dx": _np(grads[0]), "dgamma": _np(grads[1]), "dbeta": _np(grads[2])}
    if stats is not None:
        out["mean"], out["variance"] = _np(stats[0]), _np(stats[1])
    return out


def _errors(actual, expected, dtype):
    """Per key: (error, allowed error) of ``actual`` against ``expected``, for inputs of ``dtype``."""
    out = {}
    for key, ref in expected.items():
        if ref is None:
            continue
        got = actual.get(key)
        assert got is not None, f"missing {key}"
        assert got.shape == np.shape(ref), f"{key} shape {got.shape} != {np.shape(ref)}"
        scale = max(1.0, float(np.max(np.abs(ref))))
        tol = (PARAM_TOLERANCE if key in ("dgamma", "dbeta") else TOLERANCE)[dtype]
        err = float(np.max(np.abs(got - ref))) if got.size else 0.0
        out[key] = (err, tol * scale)
    return out


def _compare(actual, expected, dtype, what):
    for key, (err, allowed) in _errors(actual, expected, dtype).items():
        assert err <= allowed, f"{what}: {key} off by {err:.3g} (tolerance {allowed:.3g})"


def _check(case, dtype="float32", offset=0.0, affine=True, mode="eager", seed=0, outlier=None):
    op, shape, axis, groups = CASES[case]
    x_np, dy_np, gamma_np, beta_np = _inputs(case, offset, seed, outlier)
    x = _tensor(x_np, dtype)
    dy = _tensor(dy_np, "float32")
    # affine: both parameters, neither (False), or only "gamma" or "beta"
    gamma_np, beta_np = (gamma_np if affine in (True, "gamma") else None), (beta_np if affine in (True, "beta") else None)
    gamma = None if gamma_np is None else _tensor(gamma_np, "float32")
    beta = None if beta_np is None else _tensor(beta_np, "float32")
    stored = ops.convert_to_numpy(x).dtype
    if dtype == "float64" and str(stored) != "float64":
        pytest.skip("float64 is stored as float32 on this backend (no x64)")
    expected = normalize_and_vjp(
        _np(x), _np(dy), op, axis, groups=groups,
        gamma=gamma_np, beta=beta_np, epsilon=EPSILON,
    )
    if op != "batch":
        expected.pop("mean"), expected.pop("variance")
    fast = _run(case, x, dy, gamma, beta, mode)
    with backends.disabled():
        general = _run(case, x, dy, gamma, beta, mode)
    what = f"{case} {dtype} offset={offset:g} outlier={outlier} affine={affine} {mode}"
    _compare(fast, expected, dtype, f"fast path vs float64 closed form, {what}")
    # Parity: the two paths agree to within the general path's own distance
    # from the closed form, plus rounding (tests/ops checks the general path).
    own = _errors(general, expected, dtype)
    for key, (err, allowed) in _errors(fast, {k: general[k] for k in own}, dtype).items():
        assert err <= own[key][0] + 2 * allowed, (
            f"fast vs general path, {what}: {key} differs by {err:.3g} "
            f"(general path is {own[key][0]:.3g} from the closed form)"
        )
    assert fast["y"].dtype == np.float64  # converted; the backend dtype is checked below
    return fast


def _hook_result(case, x, gamma, beta):
    if BACKEND == "jax":  # compiled: eager JAX compiles each primitive per shape
        import jax

        result = jax.jit(lambda x, gamma, beta: (_hook_call(case, x, gamma, beta),))(x, gamma, beta)[0]
        return result
    return _hook_call(case, x, gamma, beta)


def _hook_call(case, x, gamma, beta):
    op, _, axis, groups = CASES[case]
    if op == "group":
        return HOOKS.group_norm(x, groups=groups, axis=axis, gamma=gamma, beta=beta, epsilon=EPSILON)
    if op == "layer":
        return HOOKS.layer_norm(x, axes=axis, gamma=gamma, beta=beta, epsilon=EPSILON)
    if op == "rms":
        hook = getattr(HOOKS, "rms_norm", None)
        return None if hook is None else hook(x, axes=axis, gamma=gamma, beta=beta, epsilon=EPSILON)
    return HOOKS.batch_norm_train(x, axis=axis, gamma=gamma, beta=beta, epsilon=EPSILON)


def _cpu_kernels() -> bool:
    """Whether normlab's compiled CPU kernels serve this run (torch; a C
    compiler, NORMLAB_CPU_KERNELS not 0); other backends' hooks need none."""
    if BACKEND != "torch":
        return True
    from normlab.backends import cpu

    return cpu.available()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hook_serves_or_declines_as_documented(case):
    x_np, _, gamma_np, beta_np = _inputs(case, 0.0)
    x = _tensor(x_np, "float32")
    result = _hook_result(case, x, _tensor(gamma_np, "float32"), _tensor(beta_np, "float32"))
    if case in DECLINED or (CASES[case][0] == "rms" and not _cpu_kernels()):
        assert result is None  # (torch's RMS hook has only the compiled kernels on the CPU)
        return
    assert result is not None
    y = result[0] if isinstance(result, tuple) else result
    assert tuple(y.shape) == tuple(x.shape)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_float32_parity_with_general_path_and_float64(case, offset):
    _check(case, "float32", offset, mode=MODES[0])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_far_outlier_first_in_every_slice(case, offset):
    """The first element of every slice is 1e4 above the others (N(0.5, 2)):
    a shift taken from one sample is then far from the mean, which the hooks
    must survive (JAX/TensorFlow: the second, exact pass; torch: the
    subsample mean, whose offset ratio stays within MAX_SHIFT_RATIO)."""
    _check(case, "float32", offset, mode=MODES[0], outlier=1e4)


@pytest.mark.parametrize("case", ["gn-nhwc", "in-nchw", "ln-last", "bn-nhwc", "bn-nchw", "ln-split",
                                  "bn-nhwc-c6", "rms-last"])
def test_without_gamma_and_beta(case):
    _check(case, "float32", 1e4, affine=False, mode=MODES[0])


@pytest.mark.parametrize("affine", ["gamma", "beta"])
@pytest.mark.parametrize("case", ["gn-nhwc", "gn-nchw", "in-nchw", "ln-last", "bn-nhwc", "bn-nchw", "rms-last"])
def test_with_one_parameter(case, affine):
    _check(case, "float32", 1e4, affine=affine, mode=MODES[0])


@pytest.mark.parametrize("dtype,offset", [("float16", 0.0), ("float16", 500.0), ("bfloat16", 0.0),
                                          ("bfloat16", 50.0), ("float64", 1e6)])
@pytest.mark.parametrize("case", ["gn-nhwc", "in-nchw", "in-nhwc", "in-nhwc-large", "ln-last", "bn-nhwc",
                                  "bn-nhwc-c6", "rms-last"])
def test_other_dtypes(case, dtype, offset):
    _check(case, dtype, offset, mode=MODES[0])
    x = _tensor(_inputs(case, offset)[0], dtype)
    result = _hook_result(case, x, None, None)
    if result is not None:  # the output keeps the input's dtype
        y = result[0] if isinstance(result, tuple) else result
        assert keras.backend.standardize_dtype(y.dtype) == keras.backend.standardize_dtype(x.dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["gn-nhwc", "in-nchw", "ln-last2", "bn-nhwc", "rms-last2"])
def test_every_mode(case, mode):
    if mode == "eager" and BACKEND == "jax" and case not in ("gn-nhwc", "ln-last2"):
        pytest.skip("eager JAX compiles each primitive per shape: two cases suffice")
    _check(case, "float32", 1e4, mode=mode, seed=1)


def test_batch_statistics_are_biased_per_channel_float32():
    """The batch variance is the biased one, in float32, of shape (C,)."""
    x_np = _inputs("bn-nhwc", 3.0)[0]
    x = _tensor(x_np, "float32")
    result = HOOKS.batch_norm_train(x, axis=3, gamma=None, beta=None, epsilon=EPSILON)
    assert result is not None
    _, mean, variance = result
    flat = x_np.astype("float32").astype(np.float64).reshape(-1, 8)
    np.testing.assert_allclose(_np(mean), flat.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(variance), flat.var(0), rtol=1e-5)
    assert keras.backend.standardize_dtype(variance.dtype) == "float32"


def test_nan_input_propagates_like_the_general_path():
    x_np = _inputs("gn-nhwc", 0.0)[0]
    x_np[0, 1, 2, 3] = np.nan
    x = _tensor(x_np, "float32")
    fast = _np(nops.group_norm(x, 4, 3))
    with backends.disabled():
        general = _np(nops.group_norm(x, 4, 3))
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(general))
    np.testing.assert_allclose(fast[1], general[1], atol=2e-5)


def test_constant_slices_give_beta():
    x = _tensor(np.full((2, 4, 4, 8), 7.0), "float32")
    beta = _tensor(np.arange(8.0), "float32")
    y = _np(nops.group_norm(x, 4, 3, beta=beta))
    np.testing.assert_allclose(y, np.broadcast_to(np.arange(8.0), y.shape), atol=1e-6)


def test_layers_match_with_fast_paths_off():
    """The layers (which never branch on the backend) agree either way,
    including BatchNormalization's moving statistics."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(2, 3, 3, 8)).astype("float32")
    for make, kwargs in [
        (lambda: normlab.GroupNormalization(groups=4, gamma_initializer="random_uniform"), {}),
        (lambda: normlab.BatchNormalization(momentum=0.5), {"training": True}),
    ]:
        keras.utils.set_random_seed(0)
        fast_layer = make()
        fast = _np(fast_layer(x, **kwargs))
        keras.utils.set_random_seed(0)
        general_layer = make()
        with backends.disabled():
            general = _np(general_layer(x, **kwargs))
        np.testing.assert_allclose(fast, general, atol=2e-5)
        for a, b in zip(fast_layer.weights, general_layer.weights):
            np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


def test_zero_epsilon_matches_general_path():
    """epsilon=0 is valid (torch's training batch norm kernel rejects it, so
    that hook declines)."""
    x = _tensor(_inputs("bn-nhwc", 1.0)[0], "float32")
    for op in (lambda: nops.batch_norm(x, axis=3, epsilon=0.0, training=True),
               lambda: nops.group_norm(x, 4, 3, epsilon=0.0),
               lambda: nops.layer_norm(x, -1, epsilon=0.0)):
        fast = _np(op())
        with backends.disabled():
            general = _np(op())
        np.testing.assert_allclose(fast, general, atol=2e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["bn-nhwc", "bn-nchw", "bn-rank2"])
def test_gradients_through_the_returned_batch_statistics(case, mode):
    """A loss that uses the batch mean and variance as well as the output
    (their cotangents reach the hook's backward): the gradients match the
    float64 closed form, ``d mean / dx = 1 / count`` and ``d variance / dx =
    2 (x - mean) / count`` per channel, at an offset of 1e4."""
    if BACKEND == "jax" and mode == "eager":
        pytest.skip("eager JAX compiles each primitive per shape: jit suffices")
    op, shape, axis, _ = CASES[case]
    x_np, dy_np, gamma_np, beta_np = _inputs(case, 1e4, seed=2)
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=shape[axis]) for _ in range(2)]
    x_np = x_np.astype("float32").astype(np.float64)
    expected = normalize_and_vjp(x_np, dy_np, op, axis, gamma=gamma_np, beta=beta_np, epsilon=EPSILON)
    moved = np.moveaxis(x_np, axis, -1)
    centered = moved - moved.reshape(-1, shape[axis]).mean(0)
    count = moved.size // shape[axis]
    expected["dx"] = expected["dx"] + np.moveaxis((weights[0] + 2.0 * weights[1] * centered) / count, -1, axis)
    x, dy, gamma, beta = (_tensor(a, "float32") for a in (x_np, dy_np, gamma_np, beta_np))
    w_mean, w_var = (_tensor(w, "float32") for w in weights)

    def loss(x, gamma, beta):
        y, (mean, variance) = _apply(case, x, gamma, beta)
        return (ops.sum(y * ops.cast(dy, y.dtype)) + ops.sum(mean * w_mean) + ops.sum(variance * w_var))

    if BACKEND == "jax":
        import jax

        grad = jax.grad(loss, argnums=(0, 1, 2))
        got = (jax.jit(grad) if mode == "jit" else grad)(x, gamma, beta)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(x, gamma, beta):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                value = loss(x, gamma, beta)
            return tape.gradient(value, [x, gamma, beta])

        got = (grad if mode == "eager" else tf.function(grad, jit_compile=mode == "xla"))(x, gamma, beta)
    else:
        import torch

        leaves = [t.detach().requires_grad_(True) for t in (x, gamma, beta)]
        got = torch.autograd.grad(loss(*leaves), leaves)
    for name, value in zip(["dx", "dgamma", "dbeta"], got):
        error = float(np.max(np.abs(_np(value) - expected[name])))
        scale = max(1.0, float(np.max(np.abs(expected[name]))))
        assert error <= TOLERANCE["float32"] * scale, f"{case} {mode}: {name} off by {error:.3g}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", ["gn-nhwc", "in-nchw", "ln-last", "bn-nhwc", "rms-last"])
def test_half_precision_is_computed_in_float32(case, dtype):
    """float16 and bfloat16 inputs are computed in float32 and rounded once:
    every output is within one of its dtype's spacings of the float64 result
    (computed in float16 they were 30 to 64 spacings off)."""
    op, shape, axis, groups = CASES[case]
    if op == "rms" and not _cpu_kernels():
        pytest.skip("torch's RMS hook has only the compiled kernels")
    x_np, _, gamma_np, beta_np = _inputs(case, 0.0, seed=3)
    x = _tensor(x_np, dtype)
    gamma, beta = _tensor(gamma_np, "float32"), _tensor(beta_np, "float32")
    y = _hook_result(case, x, gamma, beta)
    assert y is not None
    y = _np(y[0] if isinstance(y, tuple) else y)
    want = normalize_and_vjp(_np(x), np.zeros(shape), op, axis, groups=groups, gamma=gamma_np, beta=beta_np,
                             epsilon=EPSILON)["y"]
    spacing = 2.0 ** -(10 if dtype == "float16" else 7)  # between 1 and 2
    allowed = spacing * np.maximum(2.0 ** np.floor(np.log2(np.maximum(np.abs(want), 2.0**-14))), 2.0**-6)
    excess = float(np.max(np.abs(y - want) / allowed))
    assert excess <= 1.0, f"{case} {dtype}: {excess:.2f} spacings off"


@pytest.mark.parametrize("case", ["gn-nhwc", "in-nchw", "ln-last", "bn-nhwc", "rms-last"])
def test_an_empty_batch_matches_the_general_path(case):
    """A batch of no samples (the last, empty batch of a dataset split
    unevenly): the hooks decline it and the general path's empty output, and
    batch norm's NaN statistics, come back; no slice count divides by 0."""
    _, shape, _, _ = CASES[case]
    x = _tensor(np.zeros((0, *shape[1:])), "float32")
    gamma, beta = (_tensor(a, "float32") for a in _inputs(case, 0.0)[2:])
    fast = _apply(case, x, gamma, beta)
    with backends.disabled():
        general = _apply(case, x, gamma, beta)
    assert tuple(fast[0].shape) == (0, *shape[1:])
    for a, b in zip([fast[0], *(fast[1] or ())], [general[0], *(general[1] or ())]):
        np.testing.assert_array_equal(_np(a), _np(b))
