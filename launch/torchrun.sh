#!/usr/bin/env bash
# Train on one node with torchrun: all local GPUs, or NPROC CPU processes when there is no GPU.
#   launch/torchrun.sh CONFIG [--set section.key=value ...]
# Rerunning the same command resumes from CONFIG's run.dir (checkpoints/latest). It ends with
# the run's zero-shot table (train.final_zero_shot_tasks): the trainers write it after the last
# step; when it is still missing then, `megadyt eval --final` runs it at the training TP. On a
# complete run the command only evaluates what is missing.
# Environment: NPROC (processes; default: GPU count, else 2), PYTHON (the env's python),
# TORCHRUN (the torchrun command; default: torchrun through megadyt.parallel.torchrun, which
# exits 2 without torchrun's traceback when megadyt has already printed a one-line error),
# OMP_NUM_THREADS, NCCL_* (passed through).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 CONFIG [--set section.key=value ...]" >&2
    exit 2
fi
config="$1"
shift

python="${PYTHON:-python}"
read -r -a torchrun <<< "${TORCHRUN:-$python -m megadyt.parallel.torchrun}"

if [[ -z "${NPROC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        NPROC="$(nvidia-smi -L | wc -l)"
    else
        NPROC=2
    fi
fi

# Sane defaults; anything already exported wins.
cores="$(nproc)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / NPROC > 0 ? cores / NPROC : 1 ))}"
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # megatron-core SP overlap

run_dir="$("$python" -m megadyt plan --print run_dir --config "$config" "$@")"
mkdir -p "$run_dir/logs"
log="$run_dir/logs/torchrun-$(date +%Y%m%d-%H%M%S).log"
echo "megadyt: $NPROC process(es), run dir $run_dir, log $log" >&2

# (set -e and pipefail: a failed step ends the script with its exit status)
if [[ "$("$python" -m megadyt plan --print remaining_steps --config "$config" "$@")" != 0 ]]; then
    "${torchrun[@]}" --standalone --nnodes=1 --nproc_per_node="$NPROC" \
        -m megadyt train --config "$config" "$@" 2>&1 | tee -i -a "$log"
else
    echo "megadyt: the run is complete: nothing to train" >&2
fi

table="$("$python" -m megadyt plan --print final_eval --config "$config" "$@")"
if [[ -n "$table" ]]; then
    tp="$("$python" -m megadyt plan --print tp --config "$config" "$@")"
    echo "megadyt: evaluating the final table at TP $tp: $table" >&2
    "${torchrun[@]}" --standalone --nnodes=1 --nproc_per_node="$tp" \
        -m megadyt eval --final --config "$config" "$@" 2>&1 | tee -i -a "$log"
fi
