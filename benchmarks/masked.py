"""Masked batch norm (a Keras mask over padded sequences): normlab's layer
against Keras', on the backend ``KERAS_BACKEND`` names.

    KERAS_BACKEND=jax python benchmarks/masked.py          # (32, 128, 256), 80% kept, 25 rounds
    KERAS_BACKEND=torch python benchmarks/masked.py --quick  # small shape, 5 rounds (checks the script)

Each layer runs a training step, forward and forward+backward (the input's
and the parameters' gradients), as its backend runs a model: eagerly on
torch, under ``tf.function`` on TensorFlow, under ``jax.jit`` (a
``stateless_call``) on JAX. normlab's layer is timed with the mask and
without it (its unmasked path is a fast path, the masked one the general
path), in interleaved rounds (``normbench.timing.time_rounds``). It prints
the medians in ms and Keras' time over normlab's (above 1: normlab faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from normbench import stats  # noqa: E402
from normbench.timing import rounds_argument, time_rounds  # noqa: E402

import normlab  # noqa: E402

SHAPE, QUICK_SHAPE, KEPT = (32, 128, 256), (4, 16, 8), 0.8


def _step(layer, x, dy, mask, backward):
    """One training call of ``layer`` (built), forward only or with the gradients of ``sum(y * dy)``."""
    backend = keras.backend.backend()
    kwargs = {"training": True} if mask is None else {"training": True, "mask": mask}
    if backend == "torch":
        import torch

        xg = x.clone().requires_grad_(True)
        params = list(layer.trainable_weights)

        def torch_step():
            if not backward:
                with torch.no_grad():
                    return layer(x, **kwargs)
            return torch.autograd.grad((layer(xg, **kwargs) * dy).sum(), [xg] + [p.value for p in params])
        return torch_step
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def tf_step():
            if not backward:
                return layer(x, **kwargs)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, **kwargs) * dy)
            return tape.gradient(loss, [x] + layer.trainable_variables)
        return tf_step
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x):
        y, _ = layer.stateless_call(trainable, frozen, x, **kwargs)
        return (y * dy).sum()
    fn = jax.jit(jax.grad(loss, argnums=(0, 1))) if backward else jax.jit(lambda t, x: loss(t, x))
    return lambda: jax.block_until_ready(fn(trainable, x))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape, 5 rounds")
    parser.add_argument("--rounds", type=rounds_argument, default=None, help="rounds (default 25, 5 with --quick)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 25)
    shape = QUICK_SHAPE if args.quick else SHAPE
    rng = np.random.default_rng(0)
    x_np, dy_np = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    mask_np = rng.random(shape[:-1]) < KEPT
    x, dy, mask = (keras.ops.convert_to_tensor(a) for a in (x_np, dy_np, mask_np))
    print(f"{keras.backend.backend()}: BatchNormalization of {shape}, {KEPT:.0%} of the positions kept; "
          f"medians of {rounds} rounds, ms")
    print(f"{'pass':8} {'normlab':>8} {'keras':>8} {'unmasked':>9} {'keras/normlab':>14}")
    for backward in (False, True):
        fns = {}
        for name, make, m in (("normlab", normlab.layers.BatchNormalization, mask),
                              ("keras", keras.layers.BatchNormalization, mask),
                              ("unmasked", normlab.layers.BatchNormalization, None)):
            layer = make()
            layer.build(shape)
            fns[name] = _step(layer, x, dy, m, backward)
        samples, _, _ = time_rounds(fns, rounds, warmup=2, min_sample_s=0.005)
        for failed in (v for v in samples.values() if isinstance(v, Exception)):
            raise failed
        ms = {k: stats.median(v) * 1e3 for k, v in samples.items()}
        print(f"{'fwd+bwd' if backward else 'fwd':8} {ms['normlab']:8.2f} {ms['keras']:8.2f} {ms['unmasked']:9.2f} "
              f"{ms['keras'] / ms['normlab']:14.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
