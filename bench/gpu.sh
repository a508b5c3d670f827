#!/usr/bin/env bash
# GPU check, one command, under 8 minutes on one H100: GReaTer steps on a random-weight model of
# Llama-3-8B's shape in bfloat16 (see bench/gpu.py). Needs only python3 with torch (CUDA) and
# transformers: no network, no weights, no install of greater (src/ is put on PYTHONPATH).
#
#   bash bench/gpu.sh OUT_DIR              # writes OUT_DIR/gpu.json and OUT_DIR/gpu.log
#   bash bench/gpu.sh OUT_DIR --tiny       # the same path on a CPU with a tiny config (< 1 min)
#
# Further arguments go to bench/gpu.py (e.g. --parts paper, --max-seconds 240 120). PYTHON picks the
# interpreter (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${OUT:-gpu-check}}"
shift || true
mkdir -p "$out"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"${PYTHON:-python3}" "$here/gpu.py" --out "$out" "$@" 2>&1 | tee "$out/gpu.log"
