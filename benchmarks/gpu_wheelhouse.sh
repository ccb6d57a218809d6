#!/usr/bin/env bash
# Wheels for a GPU machine that reaches no package registry but whose image already holds CUDA
# torch (and transformers, numpy, pandas, pyarrow, ...): run here, with the registry, and carry
# the folder there; benchmarks/gpu_install.sh installs it offline.
#
#   benchmarks/gpu_wheelhouse.sh [--python-version 3.12] [--image-packages FILE] [OUT_DIR=.whl]
#
# It downloads (or builds, for sdist-only packages such as DeepSpeed) every package that
# megadyt[bench] needs and the image lacks, for that Python on manylinux x86-64. The image's
# packages come from FILE (one name per line, e.g. `pip list --format=freeze` there); without
# it, a built-in list of what the lent GPU image had (2026-11) is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
IMAGE_LIST=""
OUT=.whl
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --image-packages) IMAGE_LIST="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "gpu_wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
# What megadyt[bench] needs beyond the image: resolved here (same pins as this environment),
# minus the image's packages.
missing=$("$PY" benchmarks/gpu_wheel_list.py ${IMAGE_LIST:+--image-packages "$IMAGE_LIST"})
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
sdists=()
for req in $missing; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp "${platforms[@]}" --platform any -d "$OUT" "$req" >/dev/null 2>&1; then
    sdists+=("$req")  # no wheel for that Python: build a pure-Python one
  fi
done
if [ ${#sdists[@]} -gt 0 ]; then
  # DeepSpeed builds no ops ahead (DS_BUILD_OPS=0): a pure-Python wheel
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "${sdists[@]}"
fi
echo "gpu_wheelhouse: $(find "$OUT" -name "*.whl" | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
