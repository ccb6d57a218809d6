#!/usr/bin/env bash
# The install stage of gpu_check.sh. Skipped when the environment already has a torch that sees
# a GPU and megadyt, so rerunning the check does not reinstall. Two ways in:
#   online   a .venv with the CUDA build of torch (the package registry's default torch wheel
#            on Linux) and megadyt[dev,bench] (transformers, Liger-Kernel)
#   offline  when a wheelhouse exists (MEGADYT_WHEELS, default .whl/, made by
#            benchmarks/gpu_wheelhouse.sh on a machine with the registry): a GPU image whose
#            python already holds CUDA torch gets the missing wheels, without an index and
#            without dependency resolution, into that environment: set MEGADYT_VENV to its
#            prefix (python3 -c 'import sys; print(sys.prefix)')
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEGADYT_VENV:-$PWD/.venv}"
WHEELS="${MEGADYT_WHEELS:-$PWD/.whl}"
PY="$VENV/bin/python"
start=$SECONDS
if [ -x "$PY" ] && "$PY" -c "import torch, megadyt, megatron.core, deepspeed, lm_eval; assert torch.cuda.is_available()" 2>/dev/null
then
  echo "install: $VENV already has CUDA torch and megadyt; skipped"
  exit 0
fi
if [ -d "$WHEELS" ]; then
  if ! [ -x "$PY" ] || ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "install: offline install from $WHEELS needs MEGADYT_VENV = an environment whose python" \
      "has CUDA torch (e.g. MEGADYT_VENV=\$(python3 -c 'import sys; print(sys.prefix)'))" >&2
    exit 2
  fi
  # --no-compile: the whole stage overran 45 s on the lent H200 (not broken down); byte-
  # compiling 29 wheels is work nothing here needs up front
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile "$WHEELS"/*.whl
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e .
  # --no-deps skips the resolver: show what the image's own versions leave unmet (information)
  "$PY" -m pip check || true
else
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch>=2.6"
  "$PY" -m pip install -q -e ".[dev,bench]"
fi
"$PY" -c "import torch, deepspeed, megatron.core, lm_eval, megadyt; \
assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('install: torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(), \
'deepspeed', deepspeed.__version__, 'megatron-core', megatron.core.__version__)"
echo "install: took $((SECONDS - start)) s"
