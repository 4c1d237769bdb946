"""Equivalences between norms: GroupNorm(groups=1) is LayerNorm over all non-batch axes with a
per-channel affine, and GroupNorm(groups=C) is InstanceNorm. Property tests run on the
functional ops (what the layers call); one check per equivalence runs on the layers.
(SwitchableNorm's one-hot equivalences are in test_switchable_norm.py.)"""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import normlab
from normlab import ops as nops

# Shapes shared across the test files: JAX compiles each op once per shape.
LAST4 = (4, 3, 3, 6)  # NHWC
FIRST3 = (4, 6, 5)  # NCL, channels-first
LAST5 = (2, 2, 3, 2, 4)  # NDHWC
LAYOUTS = [(LAST4, -1), (FIRST3, 1), (LAST5, -1), (LAST5, 1)]
_COMPILED = {}


def compiled(key, fn):
    """``fn``, under ``jax.jit`` on JAX and compiled once per key (eager JAX compiles every primitive)."""
    if keras.backend.backend() != "jax":
        return fn
    if key not in _COMPILED:
        import jax

        _COMPILED[key] = jax.jit(fn)
    return _COMPILED[key]


def data(shape, seed, offset):
    return (np.random.default_rng(seed).normal(size=shape) * 3 + offset).astype("float32")


def affine(channels, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, size=channels).astype("float32"), rng.normal(size=channels).astype("float32")


def per_channel(param, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


@settings(max_examples=20, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), offset=st.floats(-100, 100), seed=st.integers(0, 3))
def test_one_group_is_layer_norm_over_all_axes_with_per_channel_affine(layout, offset, seed):
    shape, axis = layout
    x = data(shape, seed, offset)
    gamma, beta = affine(shape[axis], seed)
    gn1 = compiled(("gn1", shape, axis), lambda x, g, b: nops.group_norm(x, groups=1, axis=axis, gamma=g, beta=b))
    ln = compiled(("ln", shape), lambda x: nops.layer_norm(x, axis=list(range(1, len(shape)))))
    y = ops.convert_to_numpy(gn1(x, gamma, beta))
    ln = ops.convert_to_numpy(ln(x))
    expected = ln * per_channel(gamma, len(shape), axis) + per_channel(beta, len(shape), axis)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), offset=st.floats(-100, 100), seed=st.integers(0, 3))
def test_one_group_per_channel_is_instance_norm(layout, offset, seed):
    shape, axis = layout
    x = data(shape, seed, offset)
    gamma, beta = affine(shape[axis], seed)
    gnc = compiled(("gnc", shape, axis),
                   lambda x, g, b: nops.group_norm(x, groups=shape[axis], axis=axis, gamma=g, beta=b))
    inorm = compiled(("in", shape, axis), lambda x, g, b: nops.instance_norm(x, axis=axis, gamma=g, beta=b))
    y = ops.convert_to_numpy(gnc(x, gamma, beta))
    expected = ops.convert_to_numpy(inorm(x, gamma, beta))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, axis", [(LAST4, -1), (FIRST3, 1)])
def test_layers(shape, axis):
    x = data(shape, 0, 5.0)
    init = dict(gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=1),
                beta_initializer=keras.initializers.RandomNormal(seed=2))
    gn1 = normlab.GroupNormalization(groups=1, axis=axis, **init)
    y = ops.convert_to_numpy(gn1(x))
    gamma, beta = (ops.convert_to_numpy(w) for w in (gn1.gamma, gn1.beta))
    ln = normlab.LayerNormalization(axis=list(range(1, len(shape))), center=False, scale=False)
    expected = ops.convert_to_numpy(ln(x)) * per_channel(gamma, len(shape), axis) + per_channel(beta, len(shape), axis)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)

    gnc = normlab.GroupNormalization(groups=shape[axis], axis=axis, **init)
    inorm = normlab.InstanceNormalization(axis=axis, **init)
    np.testing.assert_allclose(ops.convert_to_numpy(gnc(x)), ops.convert_to_numpy(inorm(x)), rtol=1e-5, atol=1e-5)
