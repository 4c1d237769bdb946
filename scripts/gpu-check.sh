#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (docs/gpu.md): the tests
# marked gpu, the torch and JAX suites without the slow tests (nor the gpu
# ones again), then benchmarks/gpu.py. Every step runs, each with its log in
# OUT (default runs/gpu-check), where the benchmark writes gpu.json too;
# exits non-zero if any step failed.
#
#   scripts/gpu-check.sh [OUT [PYTEST ARGS...]]    # e.g. OUT tests/backends: a part of the suites
#
# normlab runs from this checkout (PYTHONPATH), uninstalled. On a machine
# without network access, WHEELS names a folder of the wheels it lacks
# (Keras, say): they are installed into OUT/site, first on PYTHONPATH.
# Each step stops after GPU_CHECK_STEP_TIMEOUT seconds (default 900).
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu-check}"
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
  python -m pip install -q --no-index --no-deps --no-compile --target "$out/site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$out/site:$PYTHONPATH"
fi
# JAX takes 75% of the GPU's memory per process unless told not to; the suites run several processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
limit="${GPU_CHECK_STEP_TIMEOUT:-900}"
failed=""

step() {
  local name=$1
  shift
  echo "=== $name"
  local started=$SECONDS
  if ! timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"; then
    failed="$failed $name"
  fi
  echo "--- $name: $((SECONDS - started)) s"
}

step machine env KERAS_BACKEND=torch python -c "
import torch, triton
print('torch', torch.__version__, 'triton', triton.__version__, 'CUDA', torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
import jax
print('jax', jax.__version__, jax.devices())
import keras
print('keras', keras.__version__, 'from', keras.__file__)
"
step gpu-tests env KERAS_BACKEND=torch python -m pytest -q -m gpu tests/backends/test_triton.py tests/backends/test_no_host_sync.py
step torch-suite env KERAS_BACKEND=torch python -m pytest -q -m "not slow and not gpu" -n auto --maxprocesses=8 "$@"
step jax-suite env KERAS_BACKEND=jax python -m pytest -q -m "not slow and not gpu" -n auto --maxprocesses=8 "$@"
step benchmark python benchmarks/gpu.py --out "$out/gpu.json"
if [ -n "$failed" ]; then
  echo "FAILED:$failed (logs in $out)"
  exit 1
fi
echo "all GPU checks passed (logs in $out)"
