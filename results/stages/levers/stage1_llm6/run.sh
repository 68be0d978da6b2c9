#!/usr/bin/env bash
# Lever: stage 1's QA phase with a deeper LLM (6 layers instead of the recipe's 3, same width), on
# the committed tower. Gate: held-out answers against the 3-layer LLM's (checkpoints/stage1/qa.json).
#   bash results/stages/levers/stage1_llm6/run.sh [LAYERS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LAYERS=${1:-6} STEPS=${2:-1500}
OUT=runs/stage1_llm$LAYERS LOG=results/stages/levers/stage1_llm6
mkdir -p "$OUT" && cp checkpoints/stage1/vision.safetensors "$OUT/"
[ -f "$OUT/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$OUT" --phase qa \
  --model text.num_hidden_layers="$LAYERS" --qa-steps "$STEPS" --report '' 2>&1 | tee "$LOG/log.txt"
cp "$OUT/qa.json" "$LOG/qa_llm$LAYERS.json"
