"""The JAX fast paths under JAX's transforms: ``vmap``, reverse mode and the
second derivatives built on it (Hessian-vector products as forward over
reverse, ``jax.hessian``, gradients of gradients) match the general path.
Their backward is a ``jax.custom_vjp``, which JAX cannot run in forward
mode: under ``jax.jvp`` and ``jax.jacfwd`` the hooks decline
(``normlab.backends.jax_guards.forward_mode``) and the general path serves the
call, as under ``jax.linearize``. One forward-mode use stays out of reach,
as ``docs/deploying.md`` says: ``jax.jvp`` of a ``jax.jit`` function
already traced outside forward mode (JAX reuses that trace)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from normlab import backends
from tests.backends.test_fast_paths import _apply, _inputs

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's transforms")

CASES = ["gn-nhwc", "ln-last", "bn-nhwc", "rms-last"]


def _setup(case):
    import jax.numpy as jnp

    x, dy, gamma, beta = (jnp.asarray(a, "float32") for a in _inputs(case, 3.0))

    def norm(t):
        return _apply(case, t, gamma, beta)[0]

    def loss(t):
        return jnp.sum(norm(t) ** 3 * dy)

    return x, dy, norm, loss


def _both(fn):
    """``fn()`` through the fast path, then through the general path."""
    fast = fn()
    with backends.disabled():
        general = fn()
    return fast, general


@pytest.mark.parametrize("case", CASES)
def test_second_derivatives_by_reverse_mode_match_the_general_path(case):
    import jax

    x, dy, norm, loss = _setup(case)
    jitted = {
        "hvp": lambda: jax.jit(lambda t: jax.jvp(jax.grad(loss), (t,), (dy,))[1])(x),
        "hessian row": lambda: jax.jit(lambda t: jax.hessian(loss)(t).reshape(t.size, -1)[:3])(x),
        "grad of grad": lambda: jax.jit(jax.grad(lambda t: jax.numpy.sum(jax.grad(loss)(t) ** 2)))(x),
    }
    for name, fn in jitted.items():
        fast, general = _both(fn)
        scale = max(1.0, float(np.max(np.abs(general))))
        np.testing.assert_allclose(fast, general, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{case}: {name}")


@pytest.mark.parametrize("case", CASES)
def test_vmap_over_a_stack_of_inputs_matches_a_loop(case):
    import jax
    import jax.numpy as jnp

    x, _, norm, _ = _setup(case)
    stack = jnp.stack([x, 2.0 * x - 1.0, x[::-1]])
    np.testing.assert_allclose(jax.jit(jax.vmap(norm))(stack), jnp.stack([norm(t) for t in stack]),
                               rtol=1e-5, atol=2e-5)


def test_forward_mode_runs_on_the_general_path():
    import jax

    x, dy, norm, loss = _setup("gn-nhwc")
    x, dy = x[:1], dy[:1]
    _, tangent = jax.jvp(norm, (x,), (dy,))
    with backends.disabled():
        _, general = jax.jvp(norm, (x,), (dy,))
    np.testing.assert_array_equal(tangent, general)  # the hooks declined: the same ops ran
    jacobian = jax.jacrev(norm)(x).reshape(x.size, x.size)  # reverse mode: the fast path
    np.testing.assert_allclose(tangent.reshape(-1), jacobian @ dy.reshape(-1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jacfwd(norm)(x).reshape(x.size, x.size), jacobian, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jit(lambda t: jax.jvp(norm, (t,), (dy,))[1])(x), tangent, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jvp(jax.jit(norm), (x,), (dy,))[1], tangent, rtol=1e-5, atol=1e-5)
    reverse_over_forward = jax.grad(lambda t: jax.jvp(loss, (t,), (dy,))[1])(x)
    with backends.disabled():
        want = jax.grad(lambda t: jax.jvp(loss, (t,), (dy,))[1])(x)
    np.testing.assert_allclose(reverse_over_forward, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_linearize_runs_on_the_general_path(case):
    """``jax.linearize`` runs under the trace ``grad`` and ``vjp`` use, told
    apart by its ``is_vjp``: taken for reverse mode, the hooks served it and
    JAX refused their custom_vjp."""
    import jax

    x, dy, norm, _ = _setup(case)
    y, linear = jax.linearize(norm, x)
    with backends.disabled():
        want_y, want_tangent = jax.jvp(norm, (x,), (dy,))
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)  # (linearize partially evaluates: roundings move)
    np.testing.assert_allclose(linear(dy), want_tangent, rtol=1e-5, atol=1e-5)


def test_forward_mode_that_stays_out_of_reach():
    """A jit function traced before keeps the fast path in its trace."""
    import jax

    x, dy, norm, _ = _setup("gn-nhwc")
    forward_mode = "can't apply forward-mode autodiff \\(jvp\\) to a custom_vjp function"
    jitted = jax.jit(norm)
    jitted(x)
    with pytest.raises(TypeError, match=forward_mode):
        jax.jvp(jitted, (x,), (dy,))


@pytest.mark.parametrize("op", ["layer", "group", "rms", "batch"])
def test_shard_map_with_a_replicated_input_and_per_device_gamma(op):
    """Inside ``shard_map``, a replicated ``x`` with a per-device ``gamma`` (an
    ensemble): the hooks' custom backward gave the replicated ``x`` a per-device
    gradient, which JAX rejected ("Custom VJP bwd rule must produce an output with
    the same type"). They decline there; the gradient is the general path's."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from normlab import ops as nops

    norm = {"layer": lambda x, g: nops.layer_norm(x, gamma=g),
            "group": lambda x, g: nops.group_norm(x, 4, gamma=g),
            "rms": lambda x, g: nops.rms_norm(x, gamma=g),
            "batch": lambda x, g: nops.batch_norm(x, training=True, gamma=g)}[op]
    mesh = Mesh(jax.devices()[:1], ("d",))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 8)), jnp.float32)
    gammas = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, size=(1, 8)), jnp.float32)

    def body(x, g):
        return jax.grad(lambda t: jnp.sum(jnp.sin(norm(t, g[0]))))(x)

    got = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d")), out_specs=P()))(x, gammas)
    with backends.disabled():
        want = jax.grad(lambda t: jnp.sum(jnp.sin(norm(t, gammas[0]))))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
