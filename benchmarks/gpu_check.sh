#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine that is lent for 15 minutes: it must end
# within 8, install included.
#
#   benchmarks/gpu_check.sh [--dry-run | --smoke] [OUT_DIR]   (from the repository root;
#                                                             OUT_DIR defaults to gpu-check/)
#
# 1. install  .venv with the CUDA build of torch and megadyt[dev,bench]; or, on an image with
#             CUDA torch and no registry, the wheels of benchmarks/gpu_wheelhouse.sh (.whl/)
#             into MEGADYT_VENV; skipped when CUDA torch and megadyt are already there
#             (benchmarks/gpu_install.sh, under a 60 s limit)
# 2. benchmarks/gpu_check.py, one process for every measurement: kernels, ~1.1B training
#    (HF and megadyt, eager and compiled), the step profile, plan-vs-measured memory, then the
#    GPU tests with whatever time is left. Each stage has its own time guard and writes
#    OUT_DIR/<stage>.json as soon as it ends; OUT_DIR/summary.md has every stage's table.
# Everything the check prints also goes to OUT_DIR/gpu-check.log.
#
# --dry-run prints the plan with each stage's time budget and checks that it fits 8 minutes and
# that every file it needs exists (exit 2 names what does not); --smoke runs every stage at toy
# size on a CPU (tests/test_gpu_check.py runs both).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODE=()
OUT=gpu-check
for arg in "$@"; do
  case "$arg" in
    --dry-run|--smoke) MODE=("$arg") ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (use --dry-run, --smoke or an output directory)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done

TOTAL_S=480
INSTALL_LIMIT_S=60
VENV="${MEGADYT_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
# the source tree is importable even where an editable install could not be made
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${MODE[*]:-}" = "--dry-run" ]; then
  exec "$PY" benchmarks/gpu_check.py --dry-run
fi

mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
start=$SECONDS
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; } >>"$LOG"
if [ "${MODE[*]:-}" != "--smoke" ]; then
  timeout --kill-after=10 "$INSTALL_LIMIT_S" benchmarks/gpu_install.sh >>"$LOG" 2>&1
  echo "gpu_check: install    exit $? in $((SECONDS - start)) s" | tee -a "$LOG"
  PY="$VENV/bin/python"
fi
left=$((TOTAL_S - (SECONDS - start)))
"$PY" benchmarks/gpu_check.py "${MODE[@]}" --out "$OUT" --seconds-left "$left" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
