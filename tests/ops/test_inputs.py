"""What the ops take: parameters as numbers, lists or 0-d tensors, integer inputs,
negative axes, empty batches, and the errors for what they do not take. Every
case on the backend's fast path and on the general path (``backends.disabled()``)."""

import contextlib

import keras
import numpy as np
import pytest
from keras import ops

import normlab
from normlab import backends
from normlab import ops as nops
from normlab.ops.validate import ArgumentTypeError
from tests.ops._shared import BACKEND, rng_normal, to_np

PATHS = {"fast": contextlib.nullcontext, "general": backends.disabled}
X = rng_normal((2, 4, 4, 8), 3.0, 2.0)
GAMMA, BETA = np.full(8, 2.0, "float32"), np.full(8, 0.5, "float32")

#: op name -> a call with gamma and beta (per channel, or per normalized feature)
OPS = {
    "group_norm": lambda x, g, b: nops.group_norm(x, 4, gamma=g, beta=b),
    "instance_norm": lambda x, g, b: nops.instance_norm(x, gamma=g, beta=b),
    "layer_norm": lambda x, g, b: nops.layer_norm(x, -1, gamma=g, beta=b),
    "rms_norm": lambda x, g, b: nops.rms_norm(x, -1, gamma=g, beta=b),
    "batch_norm_train": lambda x, g, b: nops.batch_norm(x, training=True, gamma=g, beta=b),
    "batch_norm_infer": lambda x, g, b: nops.batch_norm(x, [1.0] * 8, [4.0] * 8, gamma=g, beta=b),
    "filter_response_norm": lambda x, g, b: nops.filter_response_norm(x, gamma=g, beta=b),
    "dynamic_tanh": lambda x, g, b: nops.dynamic_tanh(x, 0.5, gamma=g, beta=b),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("form", ["number", "0-d tensor", "list"])
def test_parameters_as_numbers_lists_or_0d_tensors_broadcast_per_feature(op, form, path):
    """A 0-d gamma reached torch's compiled kernels as it was, which read C values
    from it: past its end (errors of 8e17). The general path failed on a reshape."""
    g, b = {"number": (2.0, 0.5), "0-d tensor": (ops.convert_to_tensor(2.0), ops.convert_to_tensor(0.5)),
            "list": (GAMMA.tolist(), BETA.tolist())}[form]
    with PATHS[path]():
        got, expected = to_np(OPS[op](X, g, b)), to_np(OPS[op](X, GAMMA, BETA))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", ["group_norm", "layer_norm", "batch_norm_train", "batch_norm_infer"])
def test_integer_inputs_are_normalized_in_float32(op, path):
    """They came back truncated to integers ([-1, 0, 0, 1] for a layer norm)."""
    x = np.arange(2 * 4 * 4 * 8).reshape(2, 4, 4, 8) % 7
    with PATHS[path]():
        got = OPS[op](x.astype("int32"), GAMMA, BETA)
        expected = OPS[op](x.astype("float32"), GAMMA, BETA)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(to_np(got), to_np(expected), atol=1e-6)


@pytest.mark.parametrize("axes", [[-1], [1, -1], [-3, -2]])
def test_moments_take_negative_axes(axes):
    """moments(x, [-1]) returned x itself as the mean and a zero variance."""
    x = rng_normal((2, 3, 5), 1e4, 2.0)
    mean, var = nops.moments(x, axes)
    canonical = tuple(sorted(a % 3 for a in axes))
    xq = x.astype("float64")
    np.testing.assert_allclose(to_np(mean), xq.mean(canonical, keepdims=True), rtol=1e-7)
    np.testing.assert_allclose(to_np(var), xq.var(canonical, keepdims=True), rtol=1e-5)
    mean, var = nops.moments(x, axes, keepdims=False)
    assert tuple(mean.shape) == tuple(d for a, d in enumerate(x.shape) if a not in canonical)
    with pytest.raises(ValueError, match=r"Invalid `axes`: expected axes in \[-3, 2\]"):
        nops.moments(x, [3])


@pytest.mark.parametrize("path", PATHS)
def test_batch_norm_training_on_an_empty_batch_returns_it_with_nan_statistics(path):
    """As the layer does; the op used to fail on a reshape of the empty shift."""
    x = np.zeros((0, 3, 3, 8), "float32")
    with PATHS[path]():
        y, mean, var = nops.batch_norm(x, training=True, gamma=GAMMA, beta=BETA, return_stats=True)
    assert tuple(y.shape) == x.shape and tuple(mean.shape) == tuple(var.shape) == (8,)
    assert np.isnan(to_np(mean)).all() and np.isnan(to_np(var)).all()


def test_a_negative_given_variance_on_the_host_is_refused():
    """A NumPy or Python variance below 0 gave NaN outputs; tensors' values are never read (a device sync)."""
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match=r"Invalid `variance`: expected a non-negative variance.*"
                                         r"Received: variance with 1 negative value\(s\) of 3, e\.g\. -2\.0\. Pass a variance"):
        nops.batch_norm(x, np.zeros(3, "float32"), np.array([1.0, -2.0, 1.0], "float32"))
    with pytest.raises(ValueError, match=r"Received: variance=-1\.0\."):
        nops.normalize(x, 0.0, -1.0)
    with pytest.raises(ValueError, match=r"Received: variance=-0\.5\."):
        nops.normalize(x, 0.0, np.float32(-0.5))
    np.testing.assert_allclose(to_np(nops.normalize(x, 1.0, np.zeros(3, "float32"), epsilon=0.0)), 0.0)


@pytest.mark.parametrize("variance", [-1.0, [-1.0, 1.0, 1.0], (1.0, 1.0, -1.0), np.float32(-1.0),
                                      np.array(-1.0, "float32"), [[-1.0], [1.0], [1.0]]],
                         ids=["number", "list", "tuple", "numpy-scalar", "0-d", "nested"])
def test_every_host_form_of_a_negative_variance_is_refused(variance):
    """Only a NumPy array reached the check in batch_norm (a number or a list was made a
    tensor first, and lists never were checked): each gave NaN outputs, silently."""
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match=r"Invalid `variance`: expected a non-negative variance"):
        nops.batch_norm(x, np.zeros(3, "float32"), variance)
    with pytest.raises(ValueError, match=r"Invalid `variance`: expected a non-negative variance"):
        nops.normalize(x, 0.0, variance if np.ndim(variance) < 2 else np.reshape(variance, (1, 3)).tolist())
    with pytest.raises(ValueError, match=r"Invalid `renorm_stddev`: expected a non-negative standard deviation"):
        nops.batch_renorm(x, np.zeros(3, "float32"), variance if np.ndim(variance) < 2 else [-1.0, 1.0, 1.0])


def test_the_zoo_refuses_a_negative_moving_variance_on_the_host():
    """EvoNorm-B0 and switchable norm in inference took one and gave NaN where batch norm refused it."""
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    bad = np.array([-1.0, 1.0, 1.0], "float32")
    zeros = np.zeros(3, "float32")
    expected = r"Invalid `moving_variance`: expected a non-negative variance.*Received: moving_variance with 1 negative"
    with pytest.raises(ValueError, match=expected):
        nops.evo_norm_b0(x, moving_variance=bad)
    with pytest.raises(ValueError, match=expected):
        nops.switchable_norm(x, zeros, zeros, zeros, bad)
    assert np.isfinite(to_np(nops.evo_norm_b0(x, moving_variance=np.ones(3, "float32")))).all()
    assert np.isfinite(to_np(nops.switchable_norm(x, zeros, zeros, zeros, np.ones(3, "float32")))).all()


def test_a_ragged_variance_list_gets_the_conversion_error_not_numpys():
    with pytest.raises(ArgumentTypeError, match=r"Invalid `variance`: expected a number or a tensor of numbers"):
        nops.batch_norm(np.ones((2, 3), "float32"), np.zeros(3, "float32"), [[1.0], [1.0, 2.0], [1.0]])



_X2 = np.ones((4, 3), "float32")


@pytest.mark.parametrize("call", [
    lambda r: nops.batch_norm(_X2, training=True, replica_sum=r),
    lambda r: nops.batch_norm(_X2, np.zeros(3, "float32"), np.ones(3, "float32"), replica_sum=r),
    lambda r: nops.batch_norm(_X2, training=True, replica_sum=r, return_stats=True, mask=np.ones((4, 1))),
    lambda r: nops.batch_renorm(_X2, np.zeros(3, "float32"), np.ones(3, "float32"), replica_sum=r),
    lambda r: nops.batch_renorm(_X2, np.zeros(3, "float32"), np.ones(3, "float32"), replica_sum=r,
                                virtual_batch_size=2),
    lambda r: nops.moments(_X2, [0], replica_sum=r),
    lambda r: nops.shifted_moments(_X2, [0], replica_sum=r),
    lambda r: nops.switchable_norm(np.ones((2, 3, 3), "float32"), [0.0] * 3, [0.0] * 3, training=True, replica_sum=r),
    lambda r: nops.switchable_norm(np.ones((2, 3, 3), "float32"), [0.0] * 3, [0.0] * 3, np.zeros(3, "float32"),
                                   np.ones(3, "float32"), training=False, replica_sum=r),
], ids=["batch_norm", "batch_norm inference", "masked", "batch_renorm", "ghost batches", "moments",
        "shifted_moments", "switchable_norm", "switchable inference"])
@pytest.mark.parametrize("value", [3, "sum"])
def test_a_replica_sum_that_is_not_callable_is_refused(call, value):
    """It failed with Python's bare "'int' object is not callable" (or not at all in inference)."""
    with pytest.raises(TypeError, match=rf"Invalid `replica_sum`: expected None or a callable .*"
                                        rf"Received: replica_sum={value!r} of type {type(value).__name__}\. Pass"):
        call(value)


def test_a_negative_renorm_stddev_on_the_host_is_refused():
    """It was replaced by sqrt(epsilon), so r was 30x too large: 20x the output, silently."""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    zeros = np.zeros(3, "float32")
    with pytest.raises(ValueError, match=r"Invalid `renorm_stddev`: expected a non-negative standard deviation.*"
                                         r"Received: renorm_stddev with 3 negative value\(s\) of 3, e\.g\. -1\.0\."):
        nops.batch_renorm(x, zeros, -np.ones(3, "float32"))
    with pytest.raises(ValueError, match=r"Received: renorm_stddev=-2\.0\. Pass a standard deviation"):
        nops.batch_renorm(x, zeros, -2.0)
    # 0 is a standard deviation: the formula's floor, sqrt(epsilon), divides then.
    y = nops.batch_renorm(x, zeros, zeros, epsilon=1e-2, clipping={"rmin": 1.0, "rmax": 1.0})
    assert np.isfinite(to_np(y)).all()

@pytest.mark.parametrize("shape, axes", [((0, 3), [0]), ((2, 0, 3), [1]), ((2, 0, 3), [0, 1])])
def test_statistics_over_an_axis_known_to_be_empty_keep_size_1_there(shape, axes):
    """The shift, an empty slice there, made the mean empty (the variance
    kept size 1), and a reshape of it fail in moments(keepdims=False),
    batch_renorm and switchable_norm's statistics. An empty slice's moments are 0
    and 0, as an all-padding slice's (they were 0 / 0: NaN gradients for the
    parameters of a layer normalizing with them)."""
    x = np.zeros(shape, "float32")
    mean, var = nops.moments(x, axes)
    kept = tuple(1 if a in axes else d for a, d in enumerate(shape))
    assert tuple(mean.shape) == tuple(var.shape) == kept
    assert not to_np(mean).any() and not to_np(var).any()
    mean, _ = nops.moments(x, axes, keepdims=False)
    assert tuple(mean.shape) == tuple(d for a, d in enumerate(shape) if a not in axes)
    if axes == [0]:
        y, mean, var = nops.batch_renorm(x, np.zeros(3, "float32"), np.ones(3, "float32"), return_stats=True)
        assert tuple(y.shape) == shape and tuple(mean.shape) == (3,) and np.isnan(to_np(mean)).all()
    if len(shape) == 3:  # ghost batches of nothing: they failed in a reshape of the empty batch
        zeros, ones = np.zeros(3, "float32"), np.ones(3, "float32")
        for y, mean, var in (nops.ghost_batch_norm(x, 2, return_stats=True),
                             nops.batch_renorm(x, zeros, ones, virtual_batch_size=2, return_stats=True)):
            assert tuple(y.shape) == shape and np.isnan(to_np(mean)).all() and np.isnan(to_np(var)).all()
        y, *stats = nops.switchable_norm(x, np.zeros(3), np.zeros(3), training=True, return_stats=True)
        assert tuple(y.shape) == shape


@pytest.mark.parametrize("call", [
    lambda x: nops.group_norm(x, 4, axis=[1, 2]),
    lambda x: nops.instance_norm(x, axis=[1, 2]),
    lambda x: nops.batch_norm(x, training=True, axis=[1, 2]),
    lambda x: nops.adaptive_instance_norm(x, x, axis=[1, 2]),
], ids=["group", "instance", "batch", "adain"])
def test_per_channel_ops_name_a_list_axis(call):
    """They failed with "too many values to unpack"."""
    with pytest.raises(ArgumentTypeError, match=r"Invalid `axis`: expected a single int \(the channel axis\)"):
        call(X)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape, axis", [((4, 8), -1), ((2, 3, 3, 8), -1), ((2, 8, 3, 3), 1), ((2, 3, 3, 6), -1)])
def test_batch_statistics_carry_their_gradient(shape, axis, path):
    """The fast paths returned the statistics as constants (torch's kernels, and
    TensorFlow's fused kernel, whose registered gradient ignores them): a loss on
    the returned mean and variance got no gradient (1.1 off)."""
    x = rng_normal(shape, 2.0, 3.0)
    a = axis % len(shape)
    reduced = tuple(i for i in range(len(shape)) if i != a)
    n = x.size // shape[a]
    xq = x.astype("float64")
    weights = np.arange(1, shape[a] + 1, dtype="float32")
    expected = (np.reshape(weights, [shape[a] if i == a else 1 for i in range(len(shape))])
                * (2 * (xq - xq.mean(reduced, keepdims=True)) + 3.0) / n)  # d/dx of sum(w * (var + 3 mean))

    def loss(t):
        y, mean, var = nops.batch_norm(t, training=True, axis=axis, return_stats=True)
        return ops.sum(y * 0.0) + ops.sum(ops.convert_to_tensor(weights) * (var + 3.0 * mean))

    with PATHS[path]():
        grad = _grad(loss, x)
    np.testing.assert_allclose(grad, expected, atol=1e-5, rtol=1e-5)


def _grad(fn, x):
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = fn(t)
        return tape.gradient(value, t).numpy()
    import torch

    t = torch.tensor(x, requires_grad=True)
    fn(t).backward()
    return t.grad.numpy()



@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("call", [
    lambda m: nops.batch_norm(X, training=True, mask=m),
    lambda m: nops.ghost_batch_norm(X, virtual_batch_size=1, mask=m),
    lambda m: nops.batch_renorm(X, np.zeros(8, "float32"), np.ones(8, "float32"), mask=m),
    lambda m: nops.moments(X, [0, 1, 2], mask=m),
])
def test_a_mask_that_does_not_broadcast_is_named(call, path):
    """A Keras-style mask (no channel axis) failed in a backend broadcast, a different
    exception class per backend and no word of `mask`."""
    with PATHS[path]():
        call(np.ones((2, 4, 4, 1), bool))  # broadcasts: fine
        with pytest.raises(ValueError, match=r"Invalid `mask`: expected a tensor broadcastable to the input's "
                                             r"shape \(2, 4, 4, 8\)\. Received: mask of shape \(2, 4, 4\)\. .*"
                                             r"mask\[\.\.\., None\]"):
            call(np.ones((2, 4, 4), bool))
        with pytest.raises(ValueError, match=r"Invalid `mask`.*Received: mask of shape \(3, 4, 4, 8\)"):
            call(np.ones((3, 4, 4, 8), bool))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow graph's mask of unknown rank")
@pytest.mark.parametrize("replica_sum", [None, lambda t: t], ids=["local", "synchronized"])
def test_a_mask_of_unknown_rank_in_a_graph(replica_sum):
    """Masked batch norm lost the input's rank to it (its padding cleanup broadcast against it) and failed
    in the statistics; the synchronized statistics failed on it too."""
    import tensorflow as tf

    mask = np.random.default_rng(1).random((2, 4, 4, 1)) < 0.6
    spec = [tf.TensorSpec([None, None, None, 8]), tf.TensorSpec(None, tf.bool)]
    moments = tf.function(lambda a, m: nops.moments(a, [0, 1, 2], mask=m, replica_sum=replica_sum),
                          input_signature=spec)
    batch_norm = tf.function(lambda a, m: nops.batch_norm(a, training=True, mask=m, replica_sum=replica_sum),
                             input_signature=spec)
    for got, want in zip(moments(X, mask), nops.moments(X, [0, 1, 2], mask=mask)):
        np.testing.assert_allclose(to_np(got), to_np(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(batch_norm(X, mask)), to_np(nops.batch_norm(X, training=True, mask=mask)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["", "x", np.array(["a"] * 8), [[["a"]]], np.array(["a"] * 8, dtype=object),
                                  np.array([None] * 8), np.ones((2, 4, 4, 1), "complex64")])
def test_a_mask_of_text_is_named(mask):
    """A string mask was taken on JAX ("" masked every position: outputs x / sqrt(epsilon), 73 here; "x" kept
    all; an object array of None masked every position too) and failed in a cast on TensorFlow and torch,
    each with its own exception; a complex one was taken by its truth value."""
    for call in (lambda: nops.batch_norm(X, training=True, mask=mask), lambda: nops.moments(X, [0, 1, 2], mask=mask)):
        with pytest.raises(ArgumentTypeError, match=r"Invalid `mask`: expected a tensor of booleans or real numbers"):
            call()
    kept = to_np(nops.moments(X, [0, 1, 2], mask=np.ones((2, 4, 4, 1), "int32"))[0])  # numbers: nonzero keeps
    np.testing.assert_allclose(kept[0, 0, 0], X.mean((0, 1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, flag", [
    (lambda v: nops.ghost_batch_norm(X, 1, return_stats=v), "return_stats"),
    (lambda v: nops.batch_renorm(X, np.zeros(8, "float32"), np.ones(8, "float32"), return_stats=v), "return_stats"),
    (lambda v: nops.moments(X, [1], keepdims=v), "keepdims"),
    (lambda v: nops.shifted_moments(X, [1], batch_statistics=v), "batch_statistics"),
])
def test_the_ops_flags_take_bools_only(call, flag):
    """``return_stats="no"`` returned the statistics (a truthy string), ``keepdims="no"`` kept the axes."""
    with pytest.raises(ArgumentTypeError, match=rf"Invalid `{flag}`: expected a bool"):
        call("no")
    call(True)


@pytest.mark.parametrize("call, name", [
    (lambda: nops.normalize(X, 0.0, 1.0, gamma="ones"), "gamma"),
    (lambda: nops.normalize(X, "0", 1.0), "mean"),
    (lambda: nops.normalize(X, 0.0, 1.0, beta=["a"] * 8), "beta"),
    (lambda: nops.filter_response_norm(X, learned_epsilon="x"), "learned_epsilon"),
    (lambda: nops.layer_norm(np.array(["a", "b"])), "x"),
    (lambda: nops.layer_norm(None), "x"),
    (lambda: nops.batch_norm(None, training=True), "x"),
])
def test_text_where_numbers_go_is_named(call, name):
    """Each backend failed in its own conversion (JAX's TypeError, TensorFlow's UnimplementedError, torch's
    "Invalid dtype: str128"; for None "Invalid dtype: object"), none naming the argument."""
    with pytest.raises(ArgumentTypeError, match=rf"Invalid `{name}`: expected a tensor of numbers"):
        call()


@pytest.mark.parametrize("rmin", [float("inf"), 1e39])
def test_renorm_clipping_refuses_an_infinite_rmin(rmin):
    """``rmin=inf`` (or 1e39, inf in float32) clipped every r to inf: an output of infinities."""
    with pytest.raises(ValueError, match=r"Invalid `renorm_clipping`: expected rmin <= 1 <= rmax"):
        nops.batch_renorm(X, np.zeros(8, "float32"), np.ones(8, "float32"), clipping={"rmin": rmin})


@pytest.mark.parametrize("u", [np.zeros((1, 8), "float32"), [[float("nan")] * 8]])
def test_spectral_norm_refuses_a_zero_or_nan_start_vector(u):
    """A zero ``u`` gave sigma 0, floored at epsilon: a kernel 1e12 times too large, silently."""
    kernel = rng_normal((3, 8), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"Invalid `u`: expected a finite, nonzero vector"):
        nops.spectral_norm(kernel, u)
    with pytest.raises(ValueError, match=r"Invalid `u`"):
        nops.power_iteration(kernel, u)


def test_statistics_ops_take_an_int_axis_and_check_it():
    mean, var = nops.moments(X, -1)
    np.testing.assert_allclose(to_np(mean)[..., 0], X.mean(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(nops.mean_square(X, -1))[..., 0], (X * X).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(to_np(nops.mean_square(X, [])), X * X, rtol=1e-6)
    for axes in (range(1, 3), np.array([1, 2]), {1: 0, 2: 0}.keys(), (1, 2)):  # any container of ints
        np.testing.assert_allclose(to_np(nops.moments(X, axes)[0]), X.mean((1, 2), keepdims=True), atol=1e-5)
        np.testing.assert_allclose(to_np(nops.mean_square(X, axes)), (X * X).mean((1, 2), keepdims=True), rtol=1e-5)
    with pytest.raises(ValueError, match=r"Invalid `axes`: expected axes in \[-4, 3\].*Received: axes=\[9\]"):
        nops.mean_square(X, [9])


@pytest.mark.parametrize("epsilon, error", [(-0.4, ValueError), (float("nan"), ValueError),
                                            ("1e-3", TypeError), (None, TypeError)])
def test_normalize_checks_its_epsilon(epsilon, error):
    """A negative or NaN epsilon was taken for 0, a string failed in a comparison."""
    with pytest.raises(error, match=r"Invalid `epsilon`: expected a non-negative float"):
        nops.normalize(X, 0.0, 0.5, epsilon=epsilon)


@pytest.mark.parametrize("bad", ["a", ["a"] * 8, {"a": 1}])
def test_a_parameter_that_is_not_numbers_is_named(bad):
    with pytest.raises(ArgumentTypeError, match=r"Invalid `gamma`: expected a number or a tensor of numbers\. "
                                                r"Received: gamma=.*Pass one value per feature"):
        nops.group_norm(X, 4, gamma=bad)


def test_tlu_needs_its_threshold():
    with pytest.raises(ValueError, match=r"Invalid `tau`: expected the learned threshold.*Received: tau=None"):
        nops.tlu(X, None)


def test_a_rank_1_input_is_named_as_such():
    """The message blamed `axis=-1` and suggested axis=-1."""
    for layer in (normlab.LayerNormalization(), normlab.GroupNormalization(groups=2), normlab.RMSNormalization()):
        with pytest.raises(ValueError, match=r"Invalid `inputs`: expected a tensor of rank >= 2.*Received: an "
                                             r"input of rank 1\. Add a batch axis"):
            layer(np.arange(4.0, dtype="float32"))


#: the ops under the norms that take a bare tensor: (call, float32 reference call)
BARE = {
    "normalize": lambda x: nops.normalize(x, 5.0, 4.0, epsilon=0.0),
    "moments": lambda x: nops.moments(x, [1])[1],
    "mean_square": lambda x: nops.mean_square(x, [1]),
    "standardize_weight": lambda x: nops.standardize_weight(x),
    "weight_norm": lambda x: nops.weight_norm(x),
    "spectral_norm": lambda x: nops.spectral_norm(x, np.ones((1, 4), "float32"))[0],
    "power_iteration": lambda x: nops.power_iteration(x, np.ones((1, 4), "float32"))[2],
}


@pytest.mark.parametrize("op", BARE)
@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_bare_ops_take_integer_and_bool_inputs_in_float32(op, dtype):
    """The weight ops and normalize returned the input's integer dtype: a weight
    norm of arange(12) was all zeros, a standardized one -1, 0 or 1."""
    k = np.arange(12).reshape(3, 4) % 5
    k = k > 2 if dtype == "bool" else k.astype(dtype)
    got = BARE[op](k)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(to_np(got), to_np(BARE[op](k.astype("float32"))), rtol=1e-6)


@pytest.mark.parametrize("op", BARE)
def test_bare_ops_refuse_complex_inputs(op):
    """They kept the real part, silently."""
    k = ops.convert_to_tensor((np.arange(12).reshape(3, 4) + 1j).astype("complex64"))
    with pytest.raises(ArgumentTypeError, match=r"expected a real tensor .* of dtype complex64\. Normalize"):
        BARE[op](k)


def test_bare_ops_take_lists():
    """normalize and moments failed on a list with "'list' object has no attribute 'dtype'"."""
    np.testing.assert_allclose(to_np(nops.normalize([[1.0, 3.0]], 2.0, 1.0, epsilon=0.0)), [[-1.0, 1.0]])
    mean, var = nops.moments([[1.0, 2.0], [3.0, 5.0]], 1)
    np.testing.assert_allclose(to_np(mean), [[1.5], [4.0]])
    np.testing.assert_allclose(to_np(var), [[0.25], [1.0]])


@pytest.mark.parametrize("name", ["mean", "variance", "gamma", "beta", "shift"])
@pytest.mark.parametrize("shape", [(3,), (4, 3), (4, 8, 1)])
def test_normalize_names_a_statistic_that_does_not_broadcast_to_x(name, shape):
    """A (3,) mean against x of shape (4, 8) failed in Keras' broadcasting, naming
    no argument; a (4, 8) mean against x of shape (4, 1) grew the output."""
    x = np.ones((4, 8), "float32")
    args = dict(mean=np.zeros((4, 1), "float32"), variance=np.ones((4, 1), "float32"))
    args[name] = np.zeros(shape, "float32")
    with pytest.raises(ValueError, match=rf"Invalid `{name}`: expected a tensor broadcastable to x's shape \(4, 8\)"):
        nops.normalize(x, **args)
    with pytest.raises(ValueError, match=r"Invalid `mean`.*Received: mean of shape \(4, 8\)"):
        nops.normalize(np.ones((4, 1), "float32"), np.zeros((4, 8), "float32"), 1.0)


def test_weight_ops_name_a_kernel_without_fan_in_axes():
    """A rank-1 kernel normalized each element by itself (all +-1)."""
    for op in (nops.weight_norm, nops.standardize_weight):
        with pytest.raises(ValueError, match=r"Invalid `kernel`: expected a tensor of rank >= 2.*pass axes=\[0\]"):
            op(np.ones(3, "float32"))
    np.testing.assert_allclose(to_np(nops.weight_norm(np.full(4, 3.0, "float32"), axes=[0])), np.full(4, 0.5))


def test_normalize_refuses_statistics_that_add_dimensions():
    """A (1, 1, 3) mean against x of shape (3,) gave a (1, 1, 3) output."""
    with pytest.raises(ValueError, match=r"Invalid `mean`.*Received: mean of shape \(1, 1, 3\)"):
        nops.normalize(np.ones(3, "float32"), np.zeros((1, 1, 3), "float32"), 1.0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph's unknown rank")
def test_normalize_takes_a_tensor_of_unknown_rank():
    """The broadcast check read its shape as a tuple: "Cannot iterate over a shape with unknown rank"."""
    import tensorflow as tf

    f = tf.function(lambda x, m: nops.normalize(x, m, 1.0, epsilon=0.0),
                    input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])
    np.testing.assert_allclose(f(np.ones((2, 3), "float32"), np.float32(0.5)).numpy(), np.full((2, 3), 0.5))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX types a NumPy float64 strongly")
def test_numpy_numbers_compute_in_the_inputs_dtype_under_x64():
    """Under jax_enable_x64, NumPy float64 statistics and alpha made float32 data compute in float64
    (10 float64 ops in normalize's graph, 5 in dynamic_tanh's), with other bits than Python floats."""
    import jax
    import jax.numpy as jnp

    if not hasattr(jax, "enable_x64"):
        pytest.skip("this JAX has no jax.enable_x64 context")
    with jax.enable_x64(True):
        x = jnp.asarray(rng_normal((4, 6), 3.0, 2.0), jnp.float32)
        for op, numpy_args, python_args in [
            (nops.normalize, (np.float64(2.9), np.float64(3.7)), (2.9, 3.7)),
            (nops.dynamic_tanh, (np.float64(0.3),), (0.3,)),
        ]:
            graph = str(jax.make_jaxpr(lambda v, op=op, a=numpy_args: op(v, *a))(x))
            assert "f64[" not in graph, graph
            np.testing.assert_array_equal(np.asarray(op(x, *numpy_args)), np.asarray(op(x, *python_args)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph's unknown channel count")
def test_an_unknown_channel_count_for_group_norm_names_the_groups():
    """Without gamma and beta the error said "since the weights depend on it":
    group norm needs the channels for its groups whatever its weights."""
    import tensorflow as tf

    trace = tf.function(lambda x: nops.group_norm(x, 2), input_signature=[tf.TensorSpec([2, 4, None])])
    with pytest.raises(ValueError, match=r"known size, since the groups divide it.*axis 2 has unknown size None"):
        trace.get_concrete_function()


def test_ghost_batches_in_a_user_layer_of_a_functional_model():
    """Keras infers a user layer's output shape by running it on a placeholder batch
    (83 on torch, a symbolic size on JAX) that the ghost size need not divide: the
    model could not be built there. Ghost batches change no shape; the model, once
    built, runs them."""
    class Ghost(keras.layers.Layer):
        def call(self, x):
            return nops.ghost_batch_norm(x, 2)

    inputs = keras.Input((4, 3))
    model = keras.Model(inputs, Ghost()(inputs))
    assert tuple(model.output.shape) == (None, 4, 3)
    x = rng_normal((6, 4, 3), 1.0, 2.0)
    np.testing.assert_allclose(to_np(model(x)), to_np(nops.ghost_batch_norm(x, 2)), atol=1e-6)
