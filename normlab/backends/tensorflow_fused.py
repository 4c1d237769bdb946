"""TensorFlow's fused NHWC batch-norm kernel (``FusedBatchNormV3``), with a
second derivative in plain ops.

Its first derivative is the fused gradient kernel, as TensorFlow registers
it. TensorFlow's derivative of that gradient records a ``GradientTape``
inside a gradient function, which records nothing where TensorFlow derives
a ``tf.function``'s forward mode: a ``tf.autodiff.ForwardAccumulator``
around a ``tf.function`` (or ``jit_compile=True``) that ran the kernel got
no tangent (``acc.jvp(y)`` None, as if ``y`` did not depend on ``x``). In
graphs the kernel made here takes its gradient from :func:`_gradient`, whose
gradient kernel takes its own from :func:`_second_derivative`: closed forms,
differentiable again. (Eagerly TensorFlow's tape keeps TensorFlow's own,
which work there.)
"""

from __future__ import annotations

import tensorflow as tf

_GRADIENT, _SECOND_DERIVATIVE = "NormlabFusedBatchNormV3", "NormlabFusedBatchNormGradV3"
_AXES = [0, 1, 2]


def fused_batch_norm(x4, scale, offset, mean, variance, *, epsilon: float, training: bool):
    """``(y, batch mean, batch variance)`` of NHWC ``x4`` by ``FusedBatchNormV3``
    (in training ``mean`` and ``variance`` are empty and the batch variance
    is the unbiased one; in inference they are used and returned)."""
    with tf.compat.v1.get_default_graph().gradient_override_map({"FusedBatchNormV3": _GRADIENT}):
        y, batch_mean, batch_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x4, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=training)
    return y, batch_mean, batch_variance


@tf.RegisterGradient(_GRADIENT)
def _gradient(op, dy, *_):
    """TensorFlow's gradient of the kernel (NHWC): the fused gradient kernel, on
    the batch statistics it saved in training, on the given ones in inference."""
    training = op.get_attr("is_training")
    first, second = (op.outputs[3], op.outputs[4]) if training else (op.inputs[3], op.inputs[4])
    with tf.compat.v1.get_default_graph().gradient_override_map({"FusedBatchNormGradV3": _SECOND_DERIVATIVE}):
        dx, dscale, doffset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=op.inputs[0], scale=op.inputs[1], reserve_space_1=first, reserve_space_2=second,
            reserve_space_3=op.outputs[5], epsilon=op.get_attr("epsilon"), data_format="NHWC",
            is_training=training)
    return dx, dscale, doffset, None, None


@tf.RegisterGradient(_SECOND_DERIVATIVE)
def _second_derivative(op, u, p, q, *_):
    """The gradient of ``L = sum(u * dx) + sum(p * dscale) + sum(q * doffset)``
    for the gradient kernel's ``dy``, ``x`` and ``scale``.

    With ``r = rsqrt(variance + epsilon)``, ``xhat = (x - mean) * r`` and
    ``s = scale * r`` per channel: in inference (given statistics)
    ``dx = s dy``, ``dscale = sum(dy xhat)``, ``doffset = sum(dy)``; in
    training (the batch's, over ``N`` positions) ``dx = s (dy - a - xhat b)``,
    ``dscale = N b``, ``doffset = N a``, with ``a = mean(dy)``,
    ``b = mean(dy xhat)``, where ``mean`` and ``r`` move with ``x``:
    ``d xhat_i / d x_j = r (delta_ij - 1/N - xhat_i xhat_j / N)``."""
    dy, x, scale = op.inputs[0], op.inputs[1], op.inputs[2]
    u, p, q = (tf.zeros_like(t) if g is None else g for g, t in zip((u, p, q), op.outputs[:3]))
    epsilon = op.get_attr("epsilon")
    if not op.get_attr("is_training"):
        r = tf.math.rsqrt(op.inputs[4] + epsilon)
        xhat = (x - op.inputs[3]) * r
        return u * (scale * r) + p * xhat + q, dy * (p * r), r * tf.reduce_sum(u * dy, _AXES), None, None, None
    count = tf.cast(tf.size(x) // tf.size(scale), x.dtype)
    mean, variance = tf.nn.moments(x, _AXES)
    r = tf.math.rsqrt(variance + epsilon)
    s = scale * r
    xhat = (x - mean) * r
    a, b = tf.reduce_mean(dy, _AXES), tf.reduce_mean(dy * xhat, _AXES)
    u_sum, u_xhat = tf.reduce_sum(u, _AXES), tf.reduce_sum(u * xhat, _AXES)
    u_projected = u - u_sum / count - xhat * (u_xhat / count)
    inner = tf.reduce_sum(u * dy, _AXES) - a * u_sum - b * u_xhat  # sum(u (dy - a - xhat b))
    d_dy = s * u_projected + p * xhat + q
    d_x = (-(inner * s * r / count) * xhat + (p * count - s * u_xhat) * (r / count) * (dy - a - xhat * b)
           - (s * b * r) * u_projected)
    return d_dy, d_x, r * inner, None, None, None
