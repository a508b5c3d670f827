#!/bin/bash
# The issue-17 comparison of docs/results.md, seed after seed over the given tasks; rerun to resume.
#   bench/evidence.sh TASK...                                      greater, zs-cot, ape, apo, 128 tokens
#   METHODS=zs-cot CAP=256 OUT=runs/evidence-zs256 bench/evidence.sh TASK...    ZS-CoT at 256 tokens
#   METHODS=greater-zs bench/evidence.sh TASK...                   the greater-zs row, same folder
# SEEDS="0" for one seed; GREATER=path/to/greater to run another copy (a frozen worktree). Two processes over disjoint task lists use both cores (one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for task in "$@"; do args+=(--task "$task"); done
for seed in ${SEEDS:-0 1 2}; do
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${GREATER:-.venv/bin/greater}" compare "${args[@]}" --data-dir ../shared/data \
    --methods "${METHODS:-greater,zs-cot,ape,apo}" --seeds "$seed" --steps 15 --train 16 --dev 24 \
    --keep-top 5 --test 100 --max-new-tokens "${CAP:-128}" --out "${OUT:-runs/evidence}"
done
