"""normlab.ops.zoo: every op against its float64 reference, PyTorch/Keras parity, dtypes, errors."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from normlab.ops import zoo
from normlab.testing import reference


BACKEND = keras.backend.backend()

# A small pool of shapes shared by the tests: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC
FLAT = (4, 6)


def call(op, x, **kwargs):
    """``op(x, **kwargs)``; on JAX under ``jax.jit``, one XLA compile instead of one per primitive."""
    if BACKEND == "jax":
        import jax

        return jax.jit(lambda t: op(t, **kwargs))(x)
    return op(x, **kwargs)


def jax_x64():
    import jax

    return bool(jax.config.jax_enable_x64)


def rng_normal(shape, loc=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype("float32")


def to_np(t):
    return ops.convert_to_numpy(ops.cast(t, "float32")) if keras.backend.standardize_dtype(t.dtype) in (
        "float16", "bfloat16") else ops.convert_to_numpy(t)


def per_channel(channels, seed, low=0.5, high=1.5):
    return np.random.default_rng(seed).uniform(low, high, size=channels).astype("float32")


# --------------------------------------------------------------------------- RMS


@pytest.mark.parametrize("shape, axis", [(FLAT, -1), (LAST4, [1, 2]), (FIRST3, 1), (LAST4, [1, 2, 3])])
def test_rms_norm_matches_reference(shape, axis):
    x = rng_normal(shape, 1.0, 2.0)
    axes = [a % len(shape) for a in np.atleast_1d(axis)]
    feature = [shape[a] for a in axes]
    gamma = per_channel(int(np.prod(feature)), 1).reshape(feature)
    beta = per_channel(int(np.prod(feature)), 2, -1, 1).reshape(feature)
    y = to_np(call(zoo.rms_norm, x, axis=axis, gamma=gamma, beta=beta))
    np.testing.assert_allclose(y, reference.rms_norm(x, axis, gamma, beta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, [2, 3], [1, 2, 3]])  # Keras' scale broadcasts on trailing axes only
def test_rms_norm_matches_keras_op(axis):
    x = rng_normal(LAST4, 0.5, 3.0)
    feature = [x.shape[a] for a in np.atleast_1d(axis)]
    gamma = per_channel(int(np.prod(feature)), 3).reshape(feature)
    ours = to_np(call(zoo.rms_norm, x, axis=axis, gamma=gamma, epsilon=1e-6))
    theirs = ops.convert_to_numpy(ops.rms_normalization(x, scale=gamma, axis=axis, epsilon=1e-6))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rms_norm_is_scale_invariant_not_shift_invariant():
    x = rng_normal(FLAT)
    y = to_np(zoo.rms_norm(x, epsilon=0.0))
    np.testing.assert_allclose(to_np(zoo.rms_norm(7.0 * x, epsilon=0.0)), y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_np(zoo.rms_norm(x + 3.0, epsilon=0.0)), y, atol=1e-2)


# --------------------------------------------------------------------------- FRN and TLU


@pytest.mark.parametrize(
    "shape, axis",
    [(LAST4, -1), (FIRST3, 1), (FIRST3, -1), (LAST5, -1), (LAST5, 1), (FLAT, -1)],
)
def test_filter_response_norm_matches_reference(shape, axis):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    gamma, beta, tau = per_channel(c, 1), per_channel(c, 2, -1, 1), per_channel(c, 3, -0.5, 0.5)
    y = to_np(call(zoo.filter_response_norm, x, axis=axis, gamma=gamma, beta=beta, epsilon=1e-6,
                   learned_epsilon=np.array([-0.01], "float32"), tau=tau))
    expected = reference.filter_response_norm(x, axis, gamma, beta, 1e-6, learned_epsilon=0.01, tau=tau)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_filter_response_norm_tfa_axis_list_names_the_spatial_axes():
    x = rng_normal(LAST4)
    np.testing.assert_allclose(to_np(zoo.filter_response_norm(x, axis=[1, 2])),
                               to_np(zoo.filter_response_norm(x, axis=-1)), atol=1e-6)
    nchw = np.transpose(x, (0, 3, 1, 2))
    np.testing.assert_allclose(to_np(zoo.filter_response_norm(nchw, axis=[2, 3])),
                               np.transpose(to_np(zoo.filter_response_norm(x)), (0, 3, 1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match=r"Invalid `axis`: expected as a list, the spatial axes.*"
                                         r"Received: axis=\[1, 2\] for an input of rank 5, which leaves axes \[3, 4\]\. "
                                         r"Pass the channel axis as an int"):
        zoo.filter_response_norm(rng_normal(LAST5), axis=[1, 2])


def test_tlu_plain_and_affine():
    x = rng_normal(FIRST3)
    tau, alpha = per_channel(5, 1, -1, 1), per_channel(5, 2, 0, 0.5)
    np.testing.assert_allclose(to_np(zoo.tlu(x, tau)), reference.tlu(x, tau), atol=0)
    np.testing.assert_allclose(to_np(zoo.tlu(x, tau, -1, alpha=alpha)), reference.tlu(x, tau, -1, alpha), atol=1e-6)
    tau1 = per_channel(6, 3, -1, 1)
    np.testing.assert_allclose(to_np(zoo.tlu(x, tau1, axis=1)), reference.tlu(x, tau1, axis=1))
    with pytest.raises(ValueError, match=r"Invalid `tau`: expected a tensor of shape \(5,\).*Received: tau.shape=\(4,\)"):
        zoo.tlu(x, np.zeros(4, "float32"))


# --------------------------------------------------------------------------- EvoNorm


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1), (LAST5, -1)])
@pytest.mark.parametrize("training", [True, False])
def test_evo_norm_b0_matches_reference(shape, axis, training):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    v, gamma, beta = per_channel(c, 1, -1, 1), per_channel(c, 2), per_channel(c, 3, -1, 1)
    moving = None if training else per_channel(c, 4, 1, 5)
    y, var = call(zoo.evo_norm_b0, x, v=v, moving_variance=moving, axis=axis, gamma=gamma, beta=beta,
                  epsilon=1e-3, training=training, return_stats=True)
    expected, expected_var = reference.evo_norm_b0(x, axis, v, gamma, beta, 1e-3, moving)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(var), expected_var, rtol=1e-5)


@pytest.mark.parametrize("shape, groups, axis", [(LAST4, 3, -1), (FIRST3, -1, 1), (LAST5, 1, -1), (FLAT, 2, -1)])
def test_evo_norm_s0_matches_reference(shape, groups, axis):
    x = rng_normal(shape, 0.5, 2.0)
    c = shape[axis]
    v, gamma, beta = per_channel(c, 1, -1, 1), per_channel(c, 2), per_channel(c, 3, -1, 1)
    y = call(zoo.evo_norm_s0, x, v=v, groups=groups, axis=axis, gamma=gamma, beta=beta, epsilon=1e-5)
    np.testing.assert_allclose(to_np(y), reference.evo_norm_s0(x, groups, axis, v, gamma, beta, 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_evo_norm_errors():
    with pytest.raises(ValueError, match=r"Invalid `x`: expected an input of rank >= 3.*EvoNorm-B0.*"
                                         r"Received: x.shape=\(4, 3\)\. Add a spatial axis"):
        zoo.evo_norm_b0(rng_normal((4, 3)), training=True)
    with pytest.raises(ValueError, match=r"Invalid `moving_variance`: .*Received: moving_variance=None, training=False"):
        zoo.evo_norm_b0(rng_normal((4, 3, 3)))
    with pytest.raises(ValueError, match=r"Invalid `groups`: expected a divisor of the number of channels \(6\).*"
                                         r"Received: groups=4 with 6 channels"):
        zoo.evo_norm_s0(rng_normal((2, 3, 6)), groups=4)


# --------------------------------------------------------------------------- Switchable


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1), (LAST5, -1)])
@pytest.mark.parametrize("training", [True, False])
def test_switchable_norm_matches_reference(shape, axis, training):
    x = rng_normal(shape, 2.0, 3.0)
    c = shape[axis]
    wm, wv = np.array([0.3, -0.2, 0.5], "float32"), np.array([-0.4, 0.1, 0.2], "float32")
    gamma, beta = per_channel(c, 2), per_channel(c, 3, -1, 1)
    mm, mv = (None, None) if training else (per_channel(c, 4, -1, 1), per_channel(c, 5, 1, 4))
    y, mean, var = call(zoo.switchable_norm, x, mean_weights=wm, variance_weights=wv, moving_mean=mm,
                        moving_variance=mv, axis=axis, gamma=gamma, beta=beta, epsilon=1e-3,
                        training=training, return_stats=True)
    expected, emean, evar = reference.switchable_norm(x, wm, wv, axis, gamma, beta, 1e-3, mm, mv)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


def test_switchable_norm_errors():
    w = np.zeros(3, "float32")
    with pytest.raises(ValueError, match=r"Invalid `moving_mean`: expected per-channel batch statistics when "
                                         r"training=False\. Received: moving_mean=None"):
        zoo.switchable_norm(rng_normal((2, 3, 4)), w, w)
    with pytest.raises(ValueError, match=r"Invalid `mean_weights`: expected a tensor of shape \(3,\).*"
                                         r"Received: mean_weights.shape=\(2,\)"):
        zoo.switchable_norm(rng_normal((2, 3, 4)), np.zeros(2, "float32"), w, training=True)


# --------------------------------------------------------------------------- LRN


@pytest.mark.parametrize(
    "shape, size, axis", [(LAST4, 5, -1), (FIRST3, 3, 1), (LAST5, 4, -1), (FLAT, 1, -1), (FIRST3, 8, 1)]
)
def test_local_response_norm_matches_reference(shape, size, axis):
    x = rng_normal(shape, 0.0, 3.0)
    y = call(zoo.local_response_norm, x, size=size, alpha=0.5, beta=0.75, k=2.0, axis=axis)
    np.testing.assert_allclose(to_np(y), reference.local_response_norm(x, size, 0.5, 0.75, 2.0, axis),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, size", [(FIRST3, 3), (FIRST3, 6), (LAST4, 5), (LAST5, 2)])  # channels on axis 1
def test_local_response_norm_matches_torch(shape, size):
    torch = pytest.importorskip("torch")
    x = rng_normal(shape, 0.0, 3.0)
    expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha=0.3, beta=0.6, k=1.5).numpy()
    y = call(zoo.local_response_norm, x, size=size, alpha=0.3, beta=0.6, k=1.5, axis=1)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(size=0), ValueError, r"Invalid `size`: expected a positive integer \(the number of channels in the window\)\. "
                                   r"Received: size=0\. Pass an int such as size=5"),
        (dict(size=2.5), ValueError, r"Received: size=2\.5"),
        (dict(k=0.0), ValueError, r"Invalid `k`: expected a number > 0\.0\. Received: k=0\.0\. Use a value such as k=1\.0"),
        (dict(alpha=-1.0), ValueError, r"Invalid `alpha`: expected a number >= 0\.0\. Received: alpha=-1\.0"),
        (dict(beta="0.75"), TypeError, r"Invalid `beta`: expected a real number\. Received: beta='0\.75' of type str"),
    ],
)
def test_local_response_norm_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        zoo.local_response_norm(rng_normal((2, 3, 4)), **kwargs)


@settings(max_examples=20, deadline=None)
@given(
    layout=st.sampled_from([(LAST4, -1), (FIRST3, 1)]),
    size=st.sampled_from([1, 2, 5]),
    alpha=st.floats(0.0, 10.0),
    beta=st.floats(-1.0, 2.0),
    k=st.floats(0.1, 5.0),
    seed=st.integers(0, 5),
)
def test_local_response_norm_property(layout, size, alpha, beta, k, seed):
    shape, axis = layout
    x = rng_normal(shape, 0.0, 2.0, seed=seed)
    y = zoo.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k, axis=axis)  # eager: no recompiles
    np.testing.assert_allclose(to_np(y), reference.local_response_norm(x, size, alpha, beta, k, axis),
                               rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------- batch norm training forms


@pytest.mark.parametrize("shape, axis, v", [(LAST4, -1, 2), (FIRST3, 1, 2), (FLAT, -1, 4), (FLAT, -1, 1)])
def test_ghost_batch_norm_matches_reference(shape, axis, v):
    x = rng_normal(shape, 1.0, 2.0)
    c = shape[axis]
    gamma, beta = per_channel(c, 1), per_channel(c, 2, -1, 1)
    if v == 1:  # a ghost batch of one sample: its own per-sample statistics
        x = x + rng_normal(shape, seed=9)
    y, mean, var = call(zoo.ghost_batch_norm, x, virtual_batch_size=v, axis=axis, gamma=gamma, beta=beta,
                        return_stats=True)
    ey, emean, evar = reference.ghost_batch_norm(x, v, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(to_np(y), ey, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


def test_ghost_batch_norm_with_mask_counts_only_unmasked_elements():
    x = rng_normal(FIRST3, 1.0, 2.0)
    mask = np.ones((4, 6, 1), "float32")
    mask[0, 3:] = 0
    mask[3, 1:] = 0
    _, mean, var = zoo.ghost_batch_norm(x, 2, mask=mask, return_stats=True)
    means, variances = [], []
    for part, m in ((x[:2], mask[:2]), (x[2:], mask[2:])):
        _, pm, pv = reference.batch_norm(part, mask=np.broadcast_to(m, part.shape))
        means.append(pm)
        variances.append(pv)
    np.testing.assert_allclose(to_np(mean), np.mean(means, axis=0), atol=1e-5)
    np.testing.assert_allclose(to_np(var), np.mean(variances, axis=0), rtol=1e-5)


def test_ghost_batch_norm_indivisible_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Invalid `virtual_batch_size`: expected a divisor of the batch size.*"
                                         r"Received: virtual_batch_size=3 with a batch of 8\. Use one of \[1, 2, 4, 8\]"):
        zoo.ghost_batch_norm(rng_normal((8, 6)), 3)
    with pytest.raises(ValueError, match=r"Invalid `virtual_batch_size`: expected a positive integer.*Received: virtual_batch_size=0"):
        zoo.ghost_batch_norm(rng_normal(FLAT), 0)


@pytest.mark.parametrize(
    "clipping", [None, {"rmax": 1.5, "rmin": 0.8, "dmax": 0.5}, {"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}, {"dmax": 0.1}]
)
@pytest.mark.parametrize("v", [None, 2])
def test_batch_renorm_matches_reference(clipping, v):
    x = rng_normal(LAST4, 1.0, 2.0)
    gamma, beta = per_channel(6, 1), per_channel(6, 2, -1, 1)
    rmean, rstd = per_channel(6, 3, -1, 1), per_channel(6, 4, 0.5, 3)
    y, mean, var = call(zoo.batch_renorm, x, renorm_mean=rmean, renorm_stddev=rstd, gamma=gamma, beta=beta,
                        clipping=clipping, virtual_batch_size=v, return_stats=True)
    ey, emean, evar = reference.batch_renorm(x, rmean, rstd, -1, gamma, beta, 1e-3, clipping, v)
    np.testing.assert_allclose(to_np(y), ey, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(to_np(mean), emean, atol=1e-5)
    np.testing.assert_allclose(to_np(var), evar, rtol=1e-5)


@pytest.mark.parametrize(
    "clipping, pattern",
    [
        ({"rmax": 1.0, "rmin": 2.0}, r"expected rmax >= rmin \(r is clipped to \[rmin, rmax\]\)\. Received: renorm_clipping="),
        ({"dmax": -1.0}, r"expected dmax >= 0"),
        ({"rmx": 3.0}, r"expected None or a dict with keys among 'rmax', 'rmin', 'dmax'\. Received: renorm_clipping=\{'rmx': 3\.0\}"),
        ({"rmax": "3"}, r"expected a number for 'rmax'"),
    ],
)
def test_renorm_clipping_errors(clipping, pattern):
    with pytest.raises(ValueError, match=r"Invalid `renorm_clipping`: " + pattern):
        zoo.check_renorm_clipping(clipping)


# --------------------------------------------------------------------------- dtypes


def _half_cases():
    x = rng_normal(LAST4, 0.5, 2.0)
    ones = np.ones(6, "float32")
    return {
        "rms_norm": (lambda t: zoo.rms_norm(t), lambda a: reference.rms_norm(a)),
        "filter_response_norm": (lambda t: zoo.filter_response_norm(t, tau=-ones),
                                 lambda a: reference.filter_response_norm(a, tau=-ones)),
        "evo_norm_b0": (lambda t: zoo.evo_norm_b0(t, training=True), lambda a: reference.evo_norm_b0(a)[0]),
        "evo_norm_s0": (lambda t: zoo.evo_norm_s0(t, groups=2), lambda a: reference.evo_norm_s0(a, 2)),
        "switchable_norm": (lambda t: zoo.switchable_norm(t, ones[:3], ones[:3], training=True),
                            lambda a: reference.switchable_norm(a, ones[:3], ones[:3])[0]),
        "local_response_norm": (lambda t: zoo.local_response_norm(t, alpha=1.0),
                                lambda a: reference.local_response_norm(a, alpha=1.0)),
        "batch_renorm": (lambda t: zoo.batch_renorm(t, ones * 0, ones, virtual_batch_size=2),
                         lambda a: reference.batch_renorm(a, ones * 0, ones, virtual_batch_size=2)[0]),
    }, x


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 4e-2), ("float64", 1e-10)])
@pytest.mark.parametrize("name", sorted(_half_cases()[0]))
def test_dtypes_are_kept_and_statistics_run_in_float32(name, dtype, tol):
    if dtype == "float64" and BACKEND == "jax" and not jax_x64():
        pytest.skip("JAX without jax_enable_x64 has no float64")
    if dtype == "float64" and BACKEND == "torch" and name not in ("rms_norm", "local_response_norm"):
        tol = 1e-6  # Keras' torch backend runs mean, maximum, ... of float64 tensors in float32
    cases, x = _half_cases()
    op, ref = cases[name]
    t = ops.cast(x, dtype)
    y = call(op, t)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    rounded = to_np(t).astype("float64") if dtype != "float64" else x.astype("float64")
    np.testing.assert_allclose(to_np(y).astype("float64"), ref(rounded), rtol=tol, atol=tol)


def test_half_precision_squares_do_not_overflow():
    x = ops.cast(rng_normal(FIRST3, 0.0, 300.0), "float16")  # x^2 > 65504, the float16 maximum
    for y in (zoo.rms_norm(x), zoo.filter_response_norm(x), zoo.local_response_norm(x, alpha=1.0)):
        assert np.isfinite(to_np(y)).all()
    np.testing.assert_allclose(to_np(zoo.rms_norm(x)), reference.rms_norm(to_np(x)), rtol=1e-2, atol=1e-2)
