#!/usr/bin/env bash
# Runs the test suite against the installed pyaeplus, not the source tree (python -P: the
# repository root is not put on sys.path).
# Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 so the Triton kernels run on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -P -m pytest -q -m "not slow" -p no:cacheprovider --durations=15 tests "$@"
