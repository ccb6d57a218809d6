#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine that is lent for minutes, not hours.
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]        (from the repository root; OUT_DIR
#                                                          defaults to gpu-check/)
#
# Stages, in order, each under its own time limit; a failing or overrunning stage is recorded
# and the next one still runs:
#   install     .venv with the CUDA build of torch and megadyt[dev,bench]; or, on an image with
#               CUDA torch and no registry, the wheels of benchmarks/gpu_wheelhouse.sh (.whl/)
#               into MEGADYT_VENV; skipped when CUDA torch and megadyt are already there, so a
#               rerun goes straight to the checks
#   gpu-tests   pytest -m gpu: Triton DyT/Derf kernels vs the formula (fp32/bf16/fp16, odd
#               widths, every gradient), SDPA vs megatron-core's attention in bf16, and a bf16
#               NCCL training run of the tiny config that trains, saves, resumes and evaluates
#   norms       DyT/Derf/RMSNorm kernels (ours, torch, Liger-Kernel) at LLaMA-7B shapes against
#               the HBM floor measured in the same run
#   appendix-c  the paper's Appendix C protocol (100 passes of one 4096x4096 bf16 norm layer)
#   train-100m, train-1b
#               tokens/s and MFU of `megadyt train` at ~100M and ~1.1B (rmsnorm, dyt; bf16) and
#               of transformers' LlamaForCausalLM of the same shape, in the same run
#               (~100M at 8 x 2048 tokens a step: a CPU-sized batch measures launch overhead)
#   plan-memory `megadyt plan`'s predicted memory against the measured peak of those runs
# Everything goes under OUT_DIR: gpu-check.log (all output), one JSON per benchmark,
# stages.tsv and summary.md (one row per stage: status, seconds, limit).
#
# --dry-run prints the stages and their commands and checks that every script and tool they
# need exists, without a GPU (tests/test_gpu_check.py runs it); exit 2 names what is missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY_RUN=0
OUT=gpu-check
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (use --dry-run or an output directory)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done

VENV="${MEGADYT_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"
# the source tree is importable even where an editable install could not be made
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# ~100M at 16K tokens a step: the CPU-sized batch (2 x 512) leaves an H100 idle between launches
GPU_BATCH_100M="--set train.micro_batch_size=8 --set train.global_batch_size=8 --set model.seq_length=2048"
# name | limit in seconds | command (run with bash -c, from the repository root)
STAGES=(
  "install|60|benchmarks/gpu_install.sh"
  "gpu-tests|140|$PY -m pytest -q -m gpu tests/test_gpu_kernels.py tests/test_gpu_training.py -p no:cacheprovider -rs --junitxml=$OUT/gpu-tests.xml"
  "norms|40|$PY benchmarks/norms.py --device cuda --dtypes bf16 --shapes 4096x4096 2048x4096 --impls reference triton --output $OUT/norms.json"
  "appendix-c|25|$PY benchmarks/norms.py --device cuda --appendix-c --impls reference triton --output $OUT/norms-appendix-c.json"
  "train-100m|85|$PY benchmarks/train_throughput.py --sizes 100m --norms rmsnorm dyt --steps 6 $GPU_BATCH_100M --output $OUT/train-100m.json"
  "train-1b|115|$PY benchmarks/train_throughput.py --sizes 1b --norms rmsnorm dyt --steps 6 --output $OUT/train-1b.json"
  "plan-memory|15|$PY benchmarks/plan_memory.py $OUT/train-100m.json $OUT/train-1b.json --output $OUT/plan-memory.json"
)

dry_run() {
  local missing=0 entry name limit cmd word
  for entry in "${STAGES[@]}"; do
    IFS='|' read -r name limit cmd <<<"$entry"
    printf '%-12s %4ss  %s\n' "$name" "$limit" "$cmd"
    for word in $cmd; do
      case "$word" in
        benchmarks/*|tests/*) [ -f "$word" ] || { echo "  missing: $word" >&2; missing=1; } ;;
      esac
    done
  done
  for tool in python3 timeout; do
    command -v "$tool" >/dev/null || { echo "  missing tool: $tool" >&2; missing=1; }
  done
  [ "$missing" -eq 0 ] && echo "dry run: every stage's scripts and tools exist" && return 0
  return 2
}

if [ "$DRY_RUN" -eq 1 ]; then
  dry_run
  exit $?
fi

mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
STATUS="$OUT/stages.tsv"
printf 'stage\tstatus\tseconds\tlimit_s\n' >"$STATUS"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; } >>"$LOG"

for entry in "${STAGES[@]}"; do
  IFS='|' read -r name limit cmd <<<"$entry"
  echo "== $name (limit ${limit}s): $cmd" >>"$LOG"
  start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$cmd" >>"$LOG" 2>&1
  rc=$?
  seconds=$((SECONDS - start))
  case "$rc" in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$limit" >>"$STATUS"
  printf 'gpu_check: %-12s %-16s %4ss of %ss\n' "$name" "$status" "$seconds" "$limit"
done

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  echo
  echo "| stage | status | seconds | limit |"
  echo "|---|---|---|---|"
  tail -n +2 "$STATUS" | awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
  echo
  echo "Details: gpu-check.log; figures: the JSON files beside this summary."
} >"$OUT/summary.md"
cat "$OUT/summary.md"
! grep -qv $'\tok\t' <(tail -n +2 "$STATUS")
