#!/usr/bin/env bash
# The install stage of gpu_check.sh: a .venv with the CUDA build of torch (the package registry's
# default torch wheel on Linux) and megadyt[dev,bench] (transformers, Liger-Kernel). Skipped when .venv already
# has a torch that sees a GPU, so rerunning the check does not reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEGADYT_VENV:-$PWD/.venv}"
start=$SECONDS
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
  "import torch, megadyt; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "install: $VENV already has CUDA torch and megadyt; skipped"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch>=2.6"
"$VENV/bin/pip" install -q -e ".[dev,bench]"
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('install: torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
echo "install: took $((SECONDS - start)) s"
