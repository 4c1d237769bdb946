#!/usr/bin/env bash
# The whole check, as CI runs it: lint, types, the package build, then the
# test suite once per Keras backend (scripts/test-backends.sh; extra arguments
# go to pytest). Exits non-zero if any step fails.
set -u
cd "$(dirname "$0")/.."
failed=""
echo "=== ruff"
ruff check normlab _normlab_cli.py tests benchmarks scripts docs || failed="$failed ruff"
echo "=== mypy"
mypy || failed="$failed mypy"
echo "=== build (wheel and sdist) and twine check"
dist="$(mktemp -d)"
log="$(mktemp)"
if python -m build --outdir "$dist" . > "$log" 2>&1; then
  twine check --strict "$dist"/*.whl "$dist"/*.tar.gz || failed="$failed twine"
else
  tail -30 "$log"; failed="$failed build"
fi
rm -rf "$dist" "$log"
scripts/test-backends.sh "$@" || failed="$failed tests"
if [ -n "$failed" ]; then
  echo "FAILED:$failed"
  exit 1
fi
echo "all checks passed"
