#!/usr/bin/env bash
# Set up (once) and run the test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
ruff check megadyt tests benchmarks evaluation
python -m pytest -q "$@"
