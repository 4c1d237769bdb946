"""Half precision on the CPU (torch): normlab's compiled kernels against the
path they replaced and against PyTorch's own op.

    python benchmarks/cpu_half.py            # full shapes, 25 rounds
    python benchmarks/cpu_half.py --quick    # small shapes, 5 rounds (checks the script; times mean little)

For group norm(32) of channels-last (8, 56, 56, 256), layer norm of
(64, 128, 768) and batch norm (training) of channels-first
(8, 256, 56, 56), in float32, bfloat16 and float16, forward and
forward+backward, it times normlab's op three ways in interleaved rounds
(``normbench.timing.time_rounds``: one call of each per round, the order
rotated): with the compiled kernels (the default), with them off
(``NORMLAB_CPU_KERNELS=0``: ATen's kernels on a float32 centered copy,
what half precision ran on before the kernels served it), and PyTorch's op
(``F.group_norm`` on the same channels-last tensor, ``F.layer_norm``,
``F.batch_norm``) with parameters of the data's dtype. It prints the
medians in ms and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from normbench import stats  # noqa: E402
from normbench.timing import rounds_argument, time_rounds  # noqa: E402

from normlab import ops as nops  # noqa: E402

#: (name, shape, channel axis, normlab's op, PyTorch's op): each op takes (x, gamma, beta).
CASES = [
    ("group norm(32), channels-last", (8, 56, 56, 256), 3,
     lambda x, g, b: nops.group_norm(x, 32, 3, gamma=g, beta=b, epsilon=1e-3),
     lambda x, g, b: F.group_norm(x.permute(0, 3, 1, 2), 32, g, b, 1e-3).permute(0, 2, 3, 1)),
    ("layer norm", (64, 128, 768), 2,
     lambda x, g, b: nops.layer_norm(x, [2], gamma=g, beta=b, epsilon=1e-3),
     lambda x, g, b: F.layer_norm(x, x.shape[-1:], g, b, 1e-3)),
    ("batch norm, channels-first", (8, 256, 56, 56), 1,
     lambda x, g, b: nops.batch_norm(x, axis=1, gamma=g, beta=b, epsilon=1e-3, training=True),
     lambda x, g, b: F.batch_norm(x, None, None, g, b, True, 0.1, 1e-3)),
]
QUICK_SHAPES = [(2, 8, 8, 64), (16, 8, 96), (2, 64, 8, 8)]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kernels_off(fn):
    def run():
        os.environ["NORMLAB_CPU_KERNELS"] = "0"
        try:
            return fn()
        finally:
            del os.environ["NORMLAB_CPU_KERNELS"]

    return run


def _calls(op, shape, axis, dtype, param_dtype, backward):
    """A function running ``op`` forward (no gradient) or forward+backward."""
    channels = shape[axis]
    x = torch.randn(shape).to(dtype)
    dy = torch.randn(shape).to(dtype)
    gamma = torch.ones(channels, dtype=param_dtype, requires_grad=True)
    beta = torch.zeros(channels, dtype=param_dtype, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    if not backward:
        def fwd():
            with torch.no_grad():
                return op(x, gamma, beta)

        return fwd
    return lambda: torch.autograd.grad(op(xg, gamma, beta), [xg, gamma, beta], dy)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 5 rounds")
    parser.add_argument("--rounds", type=rounds_argument, default=None, help="rounds (default 25, 5 with --quick)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 25)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {rounds} rounds, ms")
    print(f"{'op':30} {'dtype':9} {'pass':8} {'kernels':>8} {'before':>8} {'torch':>8} "
          f"{'before/kernels':>15} {'torch/kernels':>14}")
    for index, (name, shape, axis, op, native) in enumerate(CASES):
        shape = QUICK_SHAPES[index] if args.quick else shape
        for dtype in DTYPES:
            for backward in (False, True):
                kernels = _calls(op, shape, axis, dtype, torch.float32, backward)
                fns = {"kernels": kernels, "before": _kernels_off(kernels),
                       "torch": _calls(native, shape, axis, dtype, dtype, backward)}
                samples, _, _ = time_rounds(fns, rounds, warmup=2, min_sample_s=0.005)
                for failed in (v for v in samples.values() if isinstance(v, Exception)):
                    raise failed
                ms = {k: stats.median(v) * 1e3 for k, v in samples.items()}
                print(f"{name:30} {str(dtype)[6:]:9} {'fwd+bwd' if backward else 'fwd':8} {ms['kernels']:8.2f} "
                      f"{ms['before']:8.2f} {ms['torch']:8.2f} {ms['before'] / ms['kernels']:15.2f} "
                      f"{ms['torch'] / ms['kernels']:14.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
