#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend, each in its own process
# (Keras reads KERAS_BACKEND at import). Exits non-zero if any backend fails.
# Extra arguments go to pytest, e.g. scripts/test-backends.sh tests/ops -x
# Each backend's tests run in pytest-xdist worker processes, one per core
# up to 4 (NORMLAB_TEST_WORKERS sets the count; 0 runs them in-process); an
# idle worker takes tests queued on another (--dist worksteal), so a few long
# tests at the end of one worker's share do not leave the other waiting.
set -u
cd "$(dirname "$0")/.."
backends="${NORMLAB_TEST_BACKENDS:-tensorflow jax torch}"
workers="${NORMLAB_TEST_WORKERS:-auto}"
failed=""
for backend in $backends; do
  echo "=== KERAS_BACKEND=$backend"
  if ! KERAS_BACKEND="$backend" python -m pytest -q -n "$workers" --maxprocesses=4 --dist worksteal "$@"; then
    failed="$failed $backend"
  fi
done
if [ -n "$failed" ]; then
  echo "FAILED on:$failed"
  exit 1
fi
echo "all backends passed: $backends"
