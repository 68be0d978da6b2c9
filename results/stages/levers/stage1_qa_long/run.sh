#!/usr/bin/env bash
# Lever: does the QA plateau (loss 0.45-0.47 from step ~1000; motion answers at the majority
# answer's share) break with more steps? The 6-layer LLM of results/stages/levers/stage1_llm6
# (runs/stage1_llm6, 1500 steps) trained STEPS more steps of the QA phase (a fresh warm-up and
# cosine at the recipe's rate), tower frozen.
# Its result is committed as results/stages/levers/stage1_qa_long/stage1/ (mllm.safetensors, tokenizer/).
#   bash results/stages/levers/stage1_qa_long/run.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${1:-2500} OUT=runs/stage1_llm6_long LOG=results/stages/levers/stage1_qa_long
[ -f runs/stage1_llm6/mllm.safetensors ] || bash results/stages/levers/stage1_llm6/run.sh 6 1500
[ -f "$OUT/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$OUT" --phase qa \
  --init runs/stage1_llm6 --model text.num_hidden_layers=6 --qa-steps "$STEPS" --every 500 --report '' 2>&1 | tee "$LOG/log.txt"
cp "$OUT/qa.json" "$LOG/" && mkdir -p "$LOG/stage1" && cp -r "$OUT/mllm.safetensors" "$OUT/tokenizer" "$LOG/stage1/"
