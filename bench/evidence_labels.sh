#!/bin/bash
# The issue-31 comparison of docs/results.md ("Label tasks"): greater, zs-cot, ape, apo on the built-in label
# tasks, seed after seed (every task of a seed before the next seed), 15 steps, 32 train, 48 dev, 200 test,
# 192-token reasoning; rerun to resume. The folder is committed (docs/evidence/labels/compare), so a later
# sitting on another machine goes on where this one stopped.
#   bench/evidence_labels.sh                          both tasks, one thread
#   bench/evidence_labels.sh gen/word_kind            one task (a second shell: disjoint tasks share the folder)
# SEEDS="0" for one seed; METHODS=greater-zs for that row.
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(gen/review_sentiment gen/word_kind)
args=()
for task in "${tasks[@]}"; do args+=(--task "$task"); done
for seed in ${SEEDS:-0 1 2}; do
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${GREATER:-.venv/bin/greater}" compare "${args[@]}" \
    --methods "${METHODS:-greater,zs-cot,ape,apo}" --seeds "$seed" --steps 15 --train 32 --dev 48 \
    --keep-top 5 --test 200 --max-new-tokens "${CAP:-192}" --out "${OUT:-docs/evidence/labels/compare}"
done
