#!/usr/bin/env bash
# The main job: train the tiny DyT LLaMA on the built-in stdlib corpus (sets up everything first).
# Extra arguments go to `megadyt train`, e.g. ./run.sh --set train.steps=50
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
megadyt info --config configs/tiny/dyt.yaml "$@"
megadyt train --config configs/tiny/dyt.yaml "$@"
