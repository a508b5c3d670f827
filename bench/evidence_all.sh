#!/bin/bash
# Every phase of the issue-17 comparison of docs/results.md over the given tasks, in order; rerun to resume:
# the main table (greater, zs-cot, ape, apo; seeds 0-2), then greater-zs (seeds 0-2), then the
# options screen at seed 0 (rules for both in docs/results.md).
#   bench/evidence_all.sh gen/boolean_expressions bbh/boolean_expressions     # one shell
#   bench/evidence_all.sh gen/number_comparison bbh/sports_understanding      # another
set -euo pipefail
cd "$(dirname "$0")/.."
bench/evidence.sh "$@"
METHODS=greater-zs bench/evidence.sh "$@"
METHODS=greater:num_select=6,greater:nll_weight=0.6,greater:answer_temperature=1 SEEDS=0 bench/evidence.sh "$@"
