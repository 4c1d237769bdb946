"""The functional ops against the float64 references, torch.nn.functional,
stress inputs, and finite-difference gradients."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops
from keras.src.backend import standardize_dtype

from normlab import ops as nops
from normlab.testing import reference
from normlab.testing.autodiff import finite_differences, gradients

torch = pytest.importorskip("torch", reason="torch.nn.functional is the oracle here")
F = torch.nn.functional

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 6e-2, "float16": 1e-2}


def _np(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32") if str(x.dtype).endswith("bfloat16") else x), dtype=np.float64)


def _cast(x, dtype):
    return ops.convert_to_numpy(ops.cast(x, dtype)) if dtype == "bfloat16" else x.astype(dtype)


def _quantized(x, dtype):
    """The values ``x`` actually takes once stored in ``dtype`` on this backend, as float64."""
    return _np(ops.convert_to_tensor(_cast(x, dtype)))


def _tolerance(dtype):
    """Tolerance for the dtype the backend really stores (JAX without x64: float64 -> float32)."""
    return TOLERANCE[standardize_dtype(ops.convert_to_tensor(_cast(np.zeros(1), dtype)).dtype)]


# Hypothesis draws shapes from fixed buckets: eager JAX (and XLA under jit) compiles
# every op once per shape and dtype, so a new random shape per example costs a
# compilation each time, while the values, axes, groups and dtypes still vary.
#: (shape, channel axis) buckets for the per-channel norms: ranks 2 to 5, both layouts.
CHANNEL_BUCKETS = [
    ((3, 8), 1), ((2, 5, 6), -1), ((2, 4, 5), 1), ((2, 3, 4, 8), -1), ((2, 8, 3, 4), 1),
    ((1, 2, 6, 3, 2), 2), ((2, 3, 1, 4), -1), ((1, 1, 1, 2), 3),
]
#: Shapes for layer norm, whose axes are drawn as any subset of the non-batch axes.
LAYER_SHAPES = [(3, 4), (2, 3, 4), (2, 1, 3, 4), (1, 2, 2, 3, 2)]


@st.composite
def grouped_inputs(draw):
    shape, axis = draw(st.sampled_from(CHANNEL_BUCKETS))
    channels = shape[axis]
    divisors = [d for d in range(1, channels + 1) if channels % d == 0] + [-1]
    if len(shape) == 2:  # one value per group would normalize to 0: an error, tested elsewhere
        divisors = [d for d in divisors if d not in (channels, -1)]
    groups = draw(st.sampled_from(divisors))
    negative_axis = draw(st.booleans())
    axis = axis % len(shape)
    return shape, (axis - len(shape) if negative_axis else axis), groups


@given(grouped_inputs(), st.booleans(), st.booleans(), st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
       st.integers(0, 2**16))
def test_group_norm_matches_reference(case, center, scale, dtype, seed):
    shape, axis, groups = case
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=shape)
    channels = shape[axis]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32") if scale else None
    beta = rng.normal(size=channels).astype("float32") if center else None
    y = nops.group_norm(_cast(x, dtype), groups, axis, gamma=gamma, beta=beta)
    # The output keeps the input's dtype (JAX without x64 stores float64 inputs as float32).
    assert standardize_dtype(y.dtype) == standardize_dtype(ops.convert_to_tensor(_cast(x, dtype)).dtype)
    expected = reference.group_norm(_quantized(x, dtype), groups, axis, gamma, beta)
    # A slice with (near-)zero variance is scaled by 1/sqrt(epsilon); compare relative to that.
    np.testing.assert_allclose(_np(y), expected, atol=_tolerance(dtype) * (1 + np.abs(expected).max()))


@given(st.sampled_from(LAYER_SHAPES), st.data(), st.sampled_from(["float32", "float64", "bfloat16"]),
       st.integers(0, 2**16))
def test_layer_norm_matches_reference(shape, data, dtype, seed):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(1, rank - 1), min_size=1, max_size=rank - 1, unique=True))
    rng = np.random.default_rng(seed)
    x = rng.normal(-1.0, 2.0, size=shape)
    feature = [shape[a] for a in sorted(axes)]
    gamma = rng.uniform(0.5, 1.5, feature).astype("float32")
    beta = rng.normal(size=feature).astype("float32")
    y = nops.layer_norm(_cast(x, dtype), axes, gamma=gamma, beta=beta)
    expected = reference.layer_norm(_quantized(x, dtype), axes, gamma, beta)
    np.testing.assert_allclose(_np(y), expected, atol=_tolerance(dtype) * (1 + np.abs(expected).max()))


@given(st.sampled_from(CHANNEL_BUCKETS), st.sampled_from(["float32", "float16"]), st.integers(0, 2**16))
def test_batch_norm_training_matches_reference(bucket, dtype, seed):
    shape, axis = bucket
    axis = axis % len(shape)
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 2.0, size=shape)
    gamma = rng.uniform(0.5, 1.5, shape[axis]).astype("float32")
    beta = rng.normal(size=shape[axis]).astype("float32")
    y, mean, var = nops.batch_norm(
        _cast(x, dtype), axis=axis, gamma=gamma, beta=beta,
        training=True, return_stats=True,
    )
    expected, expected_mean, expected_var = reference.batch_norm(_quantized(x, dtype), axis, gamma, beta)
    np.testing.assert_allclose(_np(y), expected, atol=_tolerance(dtype) * (1 + np.abs(expected).max()))
    np.testing.assert_allclose(_np(mean), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(var), expected_var, rtol=1e-4, atol=1e-5)


def test_batch_norm_inference_uses_given_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5)).astype("float32")
    mean, var = np.array([1.0, 2.0, 3.0], "float32"), np.array([0.5, 1.0, 2.0], "float32")
    y = nops.batch_norm(x, mean, var, axis=1, epsilon=1e-5)
    expected, _, _ = reference.batch_norm(x, 1, epsilon=1e-5, mean=mean, variance=var)
    np.testing.assert_allclose(_np(y), expected, atol=1e-5)


def test_instance_norm_is_group_norm_with_one_group_per_channel():
    x = np.random.default_rng(0).normal(size=(2, 6, 5, 5)).astype("float32")
    np.testing.assert_allclose(
        _np(nops.instance_norm(x, axis=1)), reference.instance_norm(x, axis=1), atol=2e-5
    )
    np.testing.assert_allclose(
        _np(nops.instance_norm(x, axis=1)), _np(nops.group_norm(x, groups=6, axis=1)), atol=1e-6
    )


# --- parity with torch.nn.functional, the most used implementation ------------------------

def test_torch_functional_parity():
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, size=(3, 8, 5, 7)).astype("float32")  # NCHW
    gamma, beta = rng.uniform(0.5, 1.5, 8).astype("float32"), rng.normal(size=8).astype("float32")
    t = torch.from_numpy
    cases = {
        "group_norm": (
            nops.group_norm(x, 4, axis=1, gamma=gamma, beta=beta, epsilon=1e-5),
            F.group_norm(t(x), 4, t(gamma), t(beta), eps=1e-5),
        ),
        "instance_norm": (
            nops.instance_norm(x, axis=1, gamma=gamma, beta=beta, epsilon=1e-5),
            F.instance_norm(t(x), weight=t(gamma), bias=t(beta), eps=1e-5),
        ),
        "batch_norm": (
            nops.batch_norm(x, axis=1, gamma=gamma, beta=beta, epsilon=1e-5, training=True),
            F.batch_norm(t(x), None, None, t(gamma), t(beta), training=True, eps=1e-5),
        ),
    }
    lg, lb = rng.uniform(0.5, 1.5, (5, 7)).astype("float32"), rng.normal(size=(5, 7)).astype("float32")
    cases["layer_norm"] = (
        nops.layer_norm(x, axis=[2, 3], gamma=lg, beta=lb, epsilon=1e-5),
        F.layer_norm(t(x), (5, 7), t(lg), t(lb), eps=1e-5),
    )
    for name, (ours, theirs) in cases.items():
        np.testing.assert_allclose(_np(ours), theirs.numpy(), atol=2e-5, err_msg=name)


# --- stress inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("op", ["group", "instance", "layer", "batch"])
def test_large_offsets_stay_exact(offset, op):
    rng = np.random.default_rng(0)
    x = (offset + rng.normal(0.0, 1.0, size=(4, 6, 6, 8))).astype("float32")
    xq = x.astype(np.float64)  # what float32 can hold of it; the reference sees the same values
    if op == "group":
        y, expected = nops.group_norm(x, 4), reference.group_norm(xq, 4)
    elif op == "instance":
        y, expected = nops.instance_norm(x), reference.instance_norm(xq)
    elif op == "layer":
        y, expected = nops.layer_norm(x, [1, 2, 3]), reference.layer_norm(xq, [1, 2, 3])
    else:
        y, expected = nops.batch_norm(x, training=True), reference.batch_norm(xq)[0]
    y = _np(y)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_near_float16_max_does_not_overflow(dtype):
    rng = np.random.default_rng(0)
    x = rng.uniform(6.0e4, 6.5e4, size=(2, 4, 4, 8))  # squares overflow float16; sums of them would too
    xh = _cast(x, dtype)
    for y, expected in [
        (nops.group_norm(xh, 2), reference.group_norm(_quantized(x, dtype), 2)),
        (nops.layer_norm(xh, -1), reference.layer_norm(_quantized(x, dtype), -1)),
        (nops.batch_norm(xh, training=True), reference.batch_norm(_quantized(x, dtype))[0]),
    ]:
        assert np.isfinite(_np(y)).all()
        np.testing.assert_allclose(_np(y), expected, atol=_tolerance(dtype) * 4)


@pytest.mark.parametrize("op", ["group", "instance", "layer", "batch"])
def test_constant_input_gives_beta(op):
    x = np.full((1, 3, 3, 4), 7.5, "float32")  # batch of 1, zero variance everywhere
    beta = np.array([0.1, -0.2, 0.3, 0.4], "float32")
    gamma = np.full(4, 2.0, "float32")
    if op == "layer":
        gamma, beta = np.full((3, 3, 4), 2.0, "float32"), np.broadcast_to(beta, (3, 3, 4)).copy()
        y = nops.layer_norm(x, [1, 2, 3], gamma=gamma, beta=beta)
    elif op == "batch":
        y = nops.batch_norm(x, gamma=gamma, beta=beta, training=True)
    else:
        y = getattr(nops, f"{op}_norm")(x, **({"groups": 2} if op == "group" else {}), gamma=gamma, beta=beta)
    np.testing.assert_allclose(_np(y), np.broadcast_to(beta, x.shape), atol=1e-6)


def test_single_channel_groups_with_single_position():
    x = np.random.default_rng(0).normal(size=(3, 1, 1, 4)).astype("float32")
    y = nops.group_norm(x, groups=-1, beta=np.ones(4, "float32"))
    np.testing.assert_allclose(_np(y), np.ones((3, 1, 1, 4)), atol=1e-6)


@pytest.mark.parametrize("op", ["group", "instance", "layer"])
def test_per_sample_norms_are_batch_independent(op):
    x = np.random.default_rng(0).normal(size=(5, 4, 4, 6)).astype("float32")
    fn = {
        "group": lambda v: nops.group_norm(v, 3),
        "instance": lambda v: nops.instance_norm(v),
        "layer": lambda v: nops.layer_norm(v, [1, 2, 3]),
    }[op]
    batched = _np(fn(x))
    for i in range(len(x)):
        np.testing.assert_allclose(_np(fn(x[i:i + 1]))[0], batched[i], atol=1e-6)


def test_masked_moments_ignore_masked_elements():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")[..., None]
    x_garbage = np.where(mask > 0, x, 1e6).astype("float32")
    y, mean, var = nops.batch_norm(x_garbage, training=True, mask=mask, return_stats=True)
    _, expected_mean, expected_var = reference.batch_norm(x, mask=mask)
    np.testing.assert_allclose(_np(mean), expected_mean, atol=1e-5)
    np.testing.assert_allclose(_np(var), expected_var, atol=1e-5)


@pytest.mark.parametrize("padding", [np.nan, np.inf, -np.inf, 1e20])
@pytest.mark.parametrize("synchronized", [False, True], ids=["local", "replica_sum"])
def test_padding_values_never_reach_masked_statistics(padding, synchronized):
    # Keras' layer gives the kept positions' statistics whatever the padding holds; 0 * NaN in a masked sum
    # (or 1e20 squared) would make every output NaN.
    rng = np.random.default_rng(1)
    x = (1e4 + rng.normal(size=(4, 6, 3))).astype("float32")
    mask = rng.random((4, 6)) < 0.6
    mask[:, 0], mask[2] = True, False  # a sample of padding only, for the per-sample statistics
    mask[3, 0] = False
    padded = np.where(mask[..., None], x, padding).astype("float32")
    replica_sum = (lambda t: t) if synchronized else None
    mean, var = nops.moments(padded, [0, 1], mask=mask[..., None], keepdims=False, replica_sum=replica_sum)
    _, expected_mean, expected_var = reference.batch_norm(x, mask=mask[..., None])
    np.testing.assert_allclose(_np(mean), expected_mean, rtol=1e-6)
    np.testing.assert_allclose(_np(var), expected_var, rtol=1e-4)
    if not synchronized:  # per-sample statistics: the all-padding sample gets 0 and 0
        mean, var = nops.moments(padded, [1], mask=mask[..., None])
        kept = [x[i][mask[i]] for i in range(len(x))]
        expected = [k.astype("float64").mean(axis=0) if len(k) else np.zeros(3) for k in kept]
        np.testing.assert_allclose(_np(mean)[:, 0], expected, rtol=1e-6)
        assert np.isfinite(_np(var)).all() and not _np(var)[2].any()
    y = nops.batch_norm(padded, training=True, mask=mask[..., None], replica_sum=replica_sum)
    expected_y = reference.batch_norm(x, mask=mask[..., None])[0]
    np.testing.assert_allclose(_np(y)[mask], expected_y[mask], atol=1e-3)


@pytest.mark.parametrize("padding", [np.nan, np.inf])
@pytest.mark.parametrize("form", ["batch", "ghost", "replica_sum"])
def test_padding_values_never_reach_the_gradients(padding, form):
    # The apply step's backward multiplies each position's normalized value by its cotangent: 0 times a NaN of
    # padding made dgamma and every kept dx NaN. Any padding gives the gradients finite padding gives. With
    # cross-replica statistics, the squared residual of a NaN of padding made its own dx NaN (not 0).
    rng = np.random.default_rng(2)
    x = (1e4 + rng.normal(size=(4, 6, 3))).astype("float32")
    mask = rng.random((4, 6)) < 0.6
    mask[0, 0] = False
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype("float32"), rng.normal(size=3).astype("float32")
    cotangent = np.where(mask[..., None], rng.normal(size=x.shape), 0.0).astype("float32")

    def fn(v, g, b):
        if form == "ghost":
            return nops.ghost_batch_norm(v, 2, gamma=g, beta=b, mask=mask[..., None])
        replica_sum = (lambda t: t) if form == "replica_sum" else None  # one replica: the all-reduce is the identity
        return nops.batch_norm(v, training=True, gamma=g, beta=b, mask=mask[..., None], replica_sum=replica_sum)

    padded = np.where(mask[..., None], x, padding).astype("float32")
    got = gradients(fn, [padded, gamma, beta], cotangent)
    expected = gradients(fn, [np.where(mask[..., None], x, 0.0).astype("float32"), gamma, beta], cotangent)
    np.testing.assert_array_equal(got[0][~mask], 0.0, err_msg="d/dx at padding")
    for name, a, e in zip(["x", "gamma", "beta"], got, expected):
        a, e = (a[mask], e[mask]) if name == "x" else (a, e)
        assert np.isfinite(a).all(), f"d/d{name}"
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=f"d/d{name}")


def test_masked_statistics_of_empty_slices_and_of_no_slices():
    empty_batch = np.zeros((0, 5, 3), "float32")
    mean, var = nops.moments(empty_batch, [1], mask=np.ones((0, 5, 1), bool))  # no slices
    assert tuple(mean.shape) == tuple(var.shape) == (0, 1, 3)
    mean, var = nops.moments(np.zeros((4, 0, 3), "float32"), [1], mask=np.ones((4, 0, 1), bool))  # empty slices
    assert tuple(mean.shape) == (4, 1, 3) and not _np(mean).any() and not _np(var).any()
    y = nops.batch_norm(np.zeros((4, 6, 0), "float32"), training=True, mask=np.ones((4, 6, 1), bool))
    assert tuple(y.shape) == (4, 6, 0)


# --- gradients -----------------------------------------------------------------------------

GRADIENT_CASES = {
    "group_axis_last": (lambda x, g, b: nops.group_norm(x, 2, -1, gamma=g, beta=b),
                        lambda x, g, b: reference.group_norm(x, 2, -1, g, b), (2, 3, 4), 4),
    "group_channels_first": (lambda x, g, b: nops.group_norm(x, 3, 1, gamma=g, beta=b),
                             lambda x, g, b: reference.group_norm(x, 3, 1, g, b), (2, 6, 3), 6),
    "instance": (lambda x, g, b: nops.instance_norm(x, gamma=g, beta=b),
                 lambda x, g, b: reference.instance_norm(x, -1, g, b), (2, 4, 3), 3),
    "layer": (lambda x, g, b: nops.layer_norm(x, -1, gamma=g, beta=b),
              lambda x, g, b: reference.layer_norm(x, -1, g, b), (3, 2, 5), 5),
    "batch": (lambda x, g, b: nops.batch_norm(x, axis=1, gamma=g, beta=b, training=True),
              lambda x, g, b: reference.batch_norm(x, 1, g, b)[0], (3, 2, 4), 2),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(case):
    fn, ref, shape, channels = GRADIENT_CASES[case]
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 2.0, size=shape).astype("float32")
    g = rng.uniform(0.5, 1.5, channels).astype("float32")
    b = rng.normal(size=channels).astype("float32")
    cotangent = rng.normal(size=shape).astype("float32")
    got = gradients(fn, [x, g, b], cotangent)
    expected = finite_differences(ref, [x, g, b], cotangent)
    for name, a, e in zip(["x", "gamma", "beta"], got, expected):
        np.testing.assert_allclose(a, e, atol=2e-3, rtol=2e-3, err_msg=f"d/d{name}")


_CONSTANT_SLICES = {
    "group_norm": lambda x, **kw: nops.group_norm(x, groups=2, **kw),
    "instance_norm": nops.instance_norm,
    "layer_norm": nops.layer_norm,
    "batch_norm": lambda x, **kw: nops.batch_norm(x, training=True, **kw),
    "rms_norm": nops.rms_norm,
    "filter_response_norm": nops.filter_response_norm,
    "switchable_norm": lambda x, **kw: nops.switchable_norm(x, np.zeros(3, "float32"), np.zeros(3, "float32"),
                                                            training=True, **kw),
}


@pytest.mark.parametrize("op", sorted(_CONSTANT_SLICES))
def test_epsilon_zero_on_a_constant_slice_gives_beta_not_nan(op):
    # Every slice has zero variance (zero mean square for the RMS norms): with
    # epsilon > 0 the output is beta, and epsilon=0 keeps that instead of 0 * inf.
    x = np.zeros((2, 4, 4, 4), "float32") + (0.0 if op in ("rms_norm", "filter_response_norm") else 3.0)
    beta = np.arange(4, dtype="float32")
    y = ops.convert_to_numpy(_CONSTANT_SLICES[op](x, beta=beta, epsilon=0.0))
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
    cotangent = np.random.default_rng(0).normal(size=x.shape).astype("float32")
    (grad,) = gradients(lambda t: _CONSTANT_SLICES[op](t, epsilon=0.0), [x], cotangent)
    assert np.isfinite(grad).all()


def test_epsilon_zero_keeps_unit_variance_elsewhere():
    x = np.array([[1.0, 3.0], [2.0, 2.0]], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(nops.layer_norm(x, epsilon=0.0)), [[-1.0, 1.0], [0.0, 0.0]])


@pytest.mark.skipif(__import__("keras").backend.backend() != "jax", reason="reads JAX's traced graph")
@pytest.mark.parametrize("op", ["normalize", "layer_norm", "rms_norm"])
def test_per_row_statistics_and_per_feature_scale_never_form_a_full_size_product(op):
    """Statistics per row and gamma per feature multiply the normalized data
    one after the other: their product alone would be as large as x, and
    autodiff of it made XLA keep a full-size gradient array (RMS norm's
    forward+backward ran slower than Keras'). Checked on the general path's
    graph, forward and backward."""
    import jax
    import jax.numpy as jnp

    from normlab import backends

    x, gamma = jnp.ones((4, 5, 6)), jnp.linspace(0.5, 1.5, 6)
    calls = {
        "normalize": lambda t, g: nops.normalize(t, jnp.zeros((4, 5, 1)), jnp.ones((4, 5, 1)), gamma=g),
        "layer_norm": lambda t, g: nops.layer_norm(t, -1, gamma=g),
        "rms_norm": lambda t, g: nops.rms_norm(t, -1, gamma=g),
    }
    with backends.disabled():
        graph = jax.make_jaxpr(lambda t, g: jax.vjp(calls[op], t, g)[1](jnp.ones_like(t)))(x, gamma)
    for eqn in graph.eqns:
        if eqn.primitive.name == "mul" and eqn.outvars[0].aval.shape == x.shape:
            shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars]
            assert x.shape in shapes, f"{op}: a full-size product of {shapes}"
