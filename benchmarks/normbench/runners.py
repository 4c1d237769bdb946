"""What is timed on each backend: normlab's and Keras' layers, the native op, the floor.

Every timed function is a :class:`Call`, which keeps the compiled function
and its arguments apart so that :mod:`.work` can count the same function's
work (ops and bytes) without running a timing.
"""

from __future__ import annotations

import contextlib
import os


class Call:
    """``fn(*args)``, then ``sync`` on the result; inside ``context()`` where given."""

    def __init__(self, fn, *args, sync=None, context=None):
        self.fn, self.args, self.sync, self.context = fn, args, sync, context

    def __call__(self):
        with self.context() if self.context else contextlib.nullcontext():
            out = self.fn(*self.args)
            return self.sync(out) if self.sync else out


def floor_axes(kind):
    """The axes a normalization's statistics reduce (NHWC data): per sample
    and channel for group/instance norm, per row for layer norm, per
    channel for batch norm.

    The floor of an op is timed as ``x * sum(x, axes)`` forward and, for
    forward+backward, ``dy * sum(dy, axes)`` besides: one reduction and one
    full-size operation (a fresh output) per pass, in the backend's own
    operations and compiled the same way as the layers. Any normalization
    does more (it also needs ``sum(x^2)``, a shift and a scale, and a
    backward that reads ``x`` as well as ``dy``), so no implementation
    composed of that backend's operations beats the floor, and Keras'
    time over the floor bounds the speedup over Keras they can reach.

    Batch norm in inference (``batch_infer``: given statistics, the moving
    averages) reads no statistics of ``x``: its floor is ``x * s`` forward
    (``s`` a per-channel vector), plus ``dy * sum(dy, axes)`` for
    forward+backward (the parameters' gradients are per-channel sums)."""
    return {"group": (1, 2), "instance": (1, 2), "layer": (-1,), "rms": (-1,), "batch": (0, 1, 2),
            "batch_infer": (0, 1, 2)}[kind]


def call_kwargs(kind):
    """The layer call's keyword arguments for ``kind``: batch norm in
    training (batch statistics) or in inference (the moving averages, as a
    frozen layer of a fine-tuned model runs, with gradients flowing through it)."""
    return {"batch": {"training": True}, "batch_infer": {"training": False}}.get(kind, {})


def make_layer(source, kind, keras, normlab):
    if source == "keras":
        make = {
            "group": lambda: keras.layers.GroupNormalization(groups=32),
            "instance": lambda: keras.layers.GroupNormalization(groups=-1),
            "layer": lambda: keras.layers.LayerNormalization(axis=-1),
            "rms": lambda: keras.layers.RMSNormalization(axis=-1),
            "batch": lambda: keras.layers.BatchNormalization(),
            "batch_infer": lambda: keras.layers.BatchNormalization(),
        }
    else:
        make = {
            "group": lambda: normlab.GroupNormalization(groups=32),
            "instance": lambda: normlab.InstanceNormalization(),
            "layer": lambda: normlab.LayerNormalization(axis=-1),
            "rms": lambda: normlab.RMSNormalization(axis=-1),
            "batch": lambda: normlab.BatchNormalization(),
            "batch_infer": lambda: normlab.BatchNormalization(),
        }
    return make[kind]()


class Torch:
    name = "torch"
    mode = "eager"

    def __init__(self):
        import torch

        self.torch = torch

    def threads(self):
        return {"torch intra-op": self.torch.get_num_threads(), "torch inter-op": self.torch.get_num_interop_threads()}

    def tensor(self, a):
        return self.torch.from_numpy(a)

    def copy(self, x):
        return Call(lambda: x * 2.0)

    def layer_fns(self, layer, x, dy, kwargs, context=None):
        torch = self.torch
        layer(x, **kwargs)  # build
        params = [w.value for w in layer.trainable_weights]
        xg = x.detach().clone().requires_grad_(True)

        def fwd():
            with torch.no_grad():
                return layer(x, **kwargs)

        def fwd_bwd():
            y = layer(xg, **kwargs)
            return torch.autograd.grad(y, [xg] + params, dy)

        return Call(fwd, context=context), Call(fwd_bwd, context=context)

    def floor(self, kind, x, dy):
        torch, axes = self.torch, floor_axes(kind)

        scale = torch.ones(x.shape[-1])

        def fwd():
            with torch.no_grad():
                return x * scale if kind == "batch_infer" else x * x.sum(axes, keepdim=True)

        def fwd_bwd():
            with torch.no_grad():
                return fwd(), dy * dy.sum(axes, keepdim=True)

        return Call(fwd), Call(fwd_bwd)

    def native(self, kind, x_np, dy_np):
        import torch.nn.functional as F

        torch = self.torch
        c = x_np.shape[-1]
        gamma = torch.ones(c, requires_grad=True)
        beta = torch.zeros(c, requires_grad=True)
        if kind == "layer":
            x, dy = torch.from_numpy(x_np), torch.from_numpy(dy_np)

            def op(t):
                return F.layer_norm(t, (c,), gamma, beta, 1e-3)

            name = "F.layer_norm"
        elif kind == "rms":  # a scale only, as the layers
            x, dy, beta = torch.from_numpy(x_np), torch.from_numpy(dy_np), None

            def op(t):
                return F.rms_norm(t, (c,), gamma, 1e-6)

            name = "F.rms_norm"
        elif kind in ("batch", "batch_infer"):
            # The channels-last data viewed (not copied) as torch.channels_last.
            x = torch.from_numpy(x_np).permute(0, 3, 1, 2)
            dy = torch.from_numpy(dy_np).permute(0, 3, 1, 2)
            rm, rv = torch.zeros(c), torch.ones(c)
            training = kind == "batch"

            def op(t):
                return F.batch_norm(t, rm, rv, gamma, beta, training, 0.01, 1e-3)

            name = "F.batch_norm, channels_last view" + ("" if training else ", eval")
        else:
            # NCHW-contiguous copies made outside the timing: the best case.
            x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
            dy = torch.from_numpy(dy_np).permute(0, 3, 1, 2).contiguous()
            groups = 32 if kind == "group" else c

            def op(t):
                return F.group_norm(t, groups, gamma, beta, 1e-3)

            name = "F.group_norm, NCHW contiguous"
        xg = x.detach().clone().requires_grad_(True)

        def fwd():
            with torch.no_grad():
                return op(x)

        def fwd_bwd():
            return torch.autograd.grad(op(xg), [t for t in (xg, gamma, beta) if t is not None], dy)

        return name, Call(fwd), Call(fwd_bwd)


class Jax:
    name = "jax"
    mode = "jit"

    def __init__(self):
        import jax

        self.jax = jax

    def threads(self):
        return {"jax devices": self.jax.local_device_count()}

    def tensor(self, a):
        return self.jax.device_put(a)

    def _call(self, fn, *args, context=None):
        return Call(fn, *args, sync=self.jax.block_until_ready, context=context)

    def copy(self, x):
        return self._call(self.jax.jit(lambda t: t * 2.0), x)

    def layer_fns(self, layer, x, dy, kwargs, context=None):
        jax = self.jax
        layer(x, **kwargs)  # build
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            y, new_ntv = layer.stateless_call(tv, ntv, x, **kwargs)
            return y, new_ntv

        @jax.jit
        def forward_backward(tv, ntv, x, dy):
            def f(x, tv):
                return layer.stateless_call(tv, ntv, x, **kwargs)

            (y, new_ntv), vjp = jax.vjp(f, x, tv)
            zero = jax.tree_util.tree_map(jax.numpy.zeros_like, new_ntv)
            return vjp((dy, zero)), new_ntv

        return (self._call(forward, tv, ntv, x, context=context),
                self._call(forward_backward, tv, ntv, x, dy, context=context))

    def floor(self, kind, x, dy):
        jax, axes = self.jax, floor_axes(kind)

        scale = jax.numpy.ones(x.shape[-1])

        def fwd(x):
            return x * scale if kind == "batch_infer" else x * x.sum(axes, keepdims=True)

        def fwd_bwd(x, dy):
            return fwd(x), dy * dy.sum(axes, keepdims=True)

        return self._call(jax.jit(fwd), x), self._call(jax.jit(fwd_bwd), x, dy)

    def native(self, kind, x_np, dy_np):
        jax = self.jax
        jnp = jax.numpy
        c = x_np.shape[-1]
        x, dy = jnp.asarray(x_np), jnp.asarray(dy_np)
        gamma, beta = jnp.ones(c), jnp.zeros(c)
        if kind == "batch_infer":
            mean, var = jnp.zeros(c), jnp.ones(c)

            def infer(x, gamma, beta):
                return (x - mean) * (jax.lax.rsqrt(var + 1e-3) * gamma) + beta

            forward = jax.jit(infer)
            forward_backward = jax.jit(lambda x, g, b, dy: jax.vjp(infer, x, g, b)[1](dy))
            return ("(x - mean) * (rsqrt(var + eps) * gamma) + beta",
                    self._call(forward, x, gamma, beta), self._call(forward_backward, x, gamma, beta, dy))
        if kind == "rms":
            def rms(x, gamma, beta):  # a scale only, as the layers
                return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * gamma

            forward = jax.jit(rms)
            forward_backward = jax.jit(lambda x, g, b, dy: jax.vjp(rms, x, g, b)[1](dy))
            return ("x * rsqrt(mean(x^2) + eps) * gamma",
                    self._call(forward, x, gamma, beta), self._call(forward_backward, x, gamma, beta, dy))
        if kind == "layer":
            axes, shape = (-1,), x.shape
        elif kind == "batch":
            axes, shape = (0, 1, 2), x.shape
        else:
            groups = 32 if kind == "group" else c
            axes, shape = (1, 2, 4), x.shape[:3] + (groups, c // groups)

        def op(x, gamma, beta):
            y = jax.nn.standardize(x.reshape(shape), axis=axes, epsilon=1e-3).reshape(x.shape)
            return y * gamma + beta

        forward = jax.jit(op)
        forward_backward = jax.jit(lambda x, g, b, dy: jax.vjp(op, x, g, b)[1](dy))
        return ("jax.nn.standardize (one-pass variance)",
                self._call(forward, x, gamma, beta), self._call(forward_backward, x, gamma, beta, dy))


class TensorFlow:
    name = "tensorflow"

    def __init__(self, jit_compile, eager=False):
        import tensorflow as tf

        self.tf = tf
        self.jit_compile, self.eager = jit_compile, eager
        self.mode = "eager" if eager else "tf.function+XLA" if jit_compile else "tf.function"

    def threads(self):
        t = self.tf.config.threading
        # TF_NUM_INTRAOP_THREADS (set by --threads) is honoured without showing in the getters.
        return {"tf intra-op (0: default)": t.get_intra_op_parallelism_threads(),
                "tf inter-op (0: default)": t.get_inter_op_parallelism_threads(),
                "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS")}

    def tensor(self, a):
        return self.tf.constant(a)

    def _function(self, fn):
        return fn if self.eager else self.tf.function(fn, jit_compile=self.jit_compile)

    def copy(self, x):
        return Call(self._function(lambda t: t * 2.0), x)

    def layer_fns(self, layer, x, dy, kwargs, context=None):
        tf = self.tf
        layer(x, **kwargs)  # build
        params = layer.trainable_variables

        forward = self._function(lambda x: layer(x, **kwargs))

        def fb(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, **kwargs)
            return tape.gradient(y, [x] + list(params), output_gradients=dy)

        forward_backward = self._function(fb)
        return Call(forward, x, context=context), Call(forward_backward, x, dy, context=context)

    def floor(self, kind, x, dy):
        tf, axes = self.tf, list(floor_axes(kind))

        scale = tf.ones([x.shape[-1]])

        def fwd(x):
            return x * scale if kind == "batch_infer" else x * tf.reduce_sum(x, axes, keepdims=True)

        def fwd_bwd(x, dy):
            return fwd(x), dy * tf.reduce_sum(dy, axes, keepdims=True)

        return Call(self._function(fwd), x), Call(self._function(fwd_bwd), x, dy)

    def native(self, kind, x_np, dy_np):
        tf = self.tf
        c = x_np.shape[-1]
        x, dy = tf.constant(x_np), tf.constant(dy_np)
        gamma, beta = tf.Variable(tf.ones(c)), tf.Variable(tf.zeros(c))
        if kind == "batch":
            def op(x):
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)
                return y

            name = "tf.nn.fused_batch_norm (NHWC kernel)"
        elif kind == "batch_infer":
            mean, var = tf.zeros(c), tf.ones(c)

            def op(x):
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x, gamma, beta, mean, var, epsilon=1e-3, is_training=False)
                return y

            name = "tf.nn.fused_batch_norm, inference (NHWC kernel)"
        elif kind == "rms":
            def op(x):  # a scale only, as the layers
                return x * tf.math.rsqrt(tf.reduce_mean(x * x, axis=-1, keepdims=True) + 1e-6) * gamma

            name = "x * rsqrt(mean(x^2) + eps) * gamma"
        else:
            if kind == "layer":
                axes, shape = [-1], x.shape
            else:
                groups = 32 if kind == "group" else c
                axes, shape = [1, 2, 4], list(x.shape[:3]) + [groups, c // groups]

            def op(x):
                xs = tf.reshape(x, shape)
                mean, var = tf.nn.moments(xs, axes, keepdims=True)
                y = tf.reshape(tf.nn.batch_normalization(xs, mean, var, None, None, 1e-3), tf.shape(x))
                return y * gamma + beta

            name = "tf.nn.moments + batch_normalization"

        def fb(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = op(x)
            return tape.gradient(y, [x, gamma, beta], output_gradients=dy)

        return name, Call(self._function(op), x), Call(self._function(fb), x, dy)


def make_runners(backend, threads=None):
    """The runners of ``backend``; ``threads`` sets torch's intra-op threads (the
    driver sets the other backends' through the environment, before they start)."""
    if backend == "torch":
        runner = Torch()
        if threads:
            runner.torch.set_num_threads(threads)
        return [runner]
    if backend == "jax":
        return [Jax()]
    return [TensorFlow(False), TensorFlow(True), TensorFlow(False, eager=True)]
