"""Parameters and given statistics (``normlab.ops.params``): booleans, complex
numbers and a missing required statistic are errors that name the argument,
never a value computed with ``True`` as 1 or a complex number's real part."""

import numpy as np
import pytest

from normlab import ops as nops
from normlab.ops.validate import ArgumentTypeError
from tests.ops._shared import rng_normal, to_np

X = rng_normal((2, 4, 4, 6), 3.0, 2.0)
ZEROS, ONES = np.zeros(6, "float32"), np.ones(6, "float32")

#: (label, a call that takes the value under test in one parameter, that parameter's name)
CALLS = [
    ("layer_norm beta", lambda v: nops.layer_norm(X, beta=v), "beta"),
    ("layer_norm gamma", lambda v: nops.layer_norm(X, gamma=v), "gamma"),
    ("group_norm beta", lambda v: nops.group_norm(X, 2, beta=v), "beta"),
    ("batch_norm gamma", lambda v: nops.batch_norm(X, training=True, gamma=v), "gamma"),
    ("batch_norm mean", lambda v: nops.batch_norm(X, v, ONES), "mean"),
    ("batch_norm variance", lambda v: nops.batch_norm(X, ZEROS, v), "variance"),
    ("batch_renorm renorm_stddev", lambda v: nops.batch_renorm(X, ZEROS, v), "renorm_stddev"),
    ("switchable_norm mean_weights", lambda v: nops.switchable_norm(X, v, np.zeros(3, "float32")), "mean_weights"),
    ("filter_response_norm tau", lambda v: nops.filter_response_norm(X, tau=v), "tau"),
    ("normalize mean", lambda v: nops.normalize(X, v, 1.0), "mean"),
    ("normalize variance", lambda v: nops.normalize(X, 0.0, v), "variance"),
]
IDS = [label for label, _, _ in CALLS]


@pytest.mark.parametrize("value", [True, False, np.bool_(True), [True] * 6], ids=["True", "False", "np.bool_", "list"])
@pytest.mark.parametrize("label, call, name", CALLS, ids=IDS)
def test_a_boolean_is_not_taken_for_1_or_0(label, call, name, value):
    """``beta=True`` (for a layer's ``center=True``) shifted every output by 1, ``gamma=False`` zeroed them."""
    with pytest.raises(ArgumentTypeError, match=rf"Invalid `{name}`"):
        call(value)


@pytest.mark.parametrize("value", [np.complex64(2 + 5j), np.complex128(1 + 0j), [1 + 1j] * 6],
                         ids=["complex64", "complex128", "list"])
@pytest.mark.parametrize("label, call, name", CALLS, ids=IDS)
def test_a_complex_number_is_refused_not_cast_to_its_real_part(label, call, name, value):
    with pytest.raises(ArgumentTypeError, match=rf"Invalid `{name}`"):
        call(value)


def test_a_boolean_tensor_parameter_is_refused():
    with pytest.raises(ArgumentTypeError, match=r"Invalid `gamma`.*not booleans"):
        nops.layer_norm(X, gamma=np.ones(6, bool))


@pytest.mark.parametrize("alpha", [np.complex64(2 + 5j), np.array(2 + 5j), np.array(True), np.array("a")])
def test_dynamic_tanh_refuses_an_alpha_that_is_not_a_real_number(alpha):
    with pytest.raises(ArgumentTypeError, match=r"Invalid `alpha`"):
        nops.dynamic_tanh(X, alpha)


@pytest.mark.parametrize("call, name", [
    (lambda: nops.batch_renorm(X, None, ONES), "renorm_mean"),
    (lambda: nops.batch_renorm(X, ZEROS, None), "renorm_stddev"),
    (lambda: nops.switchable_norm(X, None, np.zeros(3, "float32")), "mean_weights"),
    (lambda: nops.switchable_norm(X, np.zeros(3, "float32"), None), "variance_weights"),
    (lambda: nops.normalize(X, None, 1.0), "mean"),
    (lambda: nops.normalize(X, 0.0, None), "variance"),
])
def test_a_missing_required_statistic_is_named(call, name):
    """Each backend failed in its own conversion ("Invalid dtype: object", ...), naming nothing."""
    with pytest.raises(ArgumentTypeError, match=rf"Invalid `{name}`: .*Received: {name}=None"):
        call()


@pytest.mark.parametrize("mask, error", [("padding", ArgumentTypeError), (np.ones((2, 4, 4, 6), "complex64"),
                                         ArgumentTypeError), (np.ones((3, 5), bool), ValueError)],
                         ids=["text", "complex", "shape"])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_checks_its_mask_whatever_training_is(mask, error, training):
    """Inference ignores the mask, but took a wrong one silently where training refused it."""
    with pytest.raises(error, match=r"Invalid `mask`"):
        nops.batch_norm(X, ZEROS, ONES, training=training, mask=mask)


def test_real_values_of_every_kind_are_still_taken():
    expected = to_np(nops.layer_norm(X, gamma=np.full(6, 2.0, "float32"), beta=np.full(6, 0.5, "float32")))
    for gamma, beta in [(2.0, 0.5), (np.float32(2.0), np.float64(0.5)), ([2.0] * 6, [0.5] * 6), (2, np.int64(0))]:
        y = to_np(nops.layer_norm(X, gamma=gamma, beta=beta))
        np.testing.assert_allclose(y, expected if beta != 0 else expected - 0.5, rtol=1e-6, atol=1e-6)
