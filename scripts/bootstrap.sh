#!/usr/bin/env bash
# Create ./.venv with megadyt and its dependencies, once. Sourced by run.sh and test.sh.
# CPU machines get the CPU build of torch pinned (a bare `torch` would pull a multi-GB CUDA build);
# on a GPU cluster install torch for your CUDA first, then `pip install -e .` (launch/README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEGADYT_VENV:-$ROOT/.venv}"
STAMP="$VENV/.megadyt-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.cfg" -nt "$STAMP" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      "$VENV/bin/pip" install -q "torch>=2.6"
    else
      "$VENV/bin/pip" install -q "torch==2.13.0"
    fi
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/pip" install -q -e "$ROOT[dev,hf]"
  else
    # triton's interpreter lets the CPU test suite check the GPU kernels too
    "$VENV/bin/pip" install -q -e "$ROOT[dev,triton,hf]"
  fi
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
