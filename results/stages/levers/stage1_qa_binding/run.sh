#!/usr/bin/env bash
# Lever: teach stage 1's LLM to look at the object a question names. The packed-QA stage 1
# (results/stages/levers/stage1_qa_packed) answers about one-object clips at 1.00 but about clips
# of three or more objects at 0.50 (colour, shape), i.e. it reads the scene, not the object named.
# Here the binding term (`--qa-attention`) asks the answer position of each turn, in the last
# layer's heads 0 and 1, to put its vision attention on the asked object's token cells, beside the
# answer loss; STEPS more packed QA steps from that stage 1. Then (RUN_STAGE3=1) stage 3 on it.
#   bash results/stages/levers/stage1_qa_binding/run.sh [STEPS] [WEIGHT]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${1:-1500} WEIGHT=${2:-1.0} LOG=results/stages/levers/stage1_qa_binding
S1=runs/stage1_qa_binding S3=runs/stage3_qa_binding
[ -f "$S1/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --phase qa \
  --init results/stages/levers/stage1_qa_packed/stage1 --qa-steps "$STEPS" --qa-clips 16 --qa-questions 8 \
  --qa-attention "$WEIGHT" --every 250 --report '' 2>&1 | tee "$LOG/stage1.txt"
cp "$S1/qa.json" "$LOG/" && mkdir -p "$LOG/stage1" && cp -r "$S1/mllm.safetensors" "$S1/tokenizer" "$LOG/stage1/"
[ "${RUN_STAGE3:-0}" = 1 ] || exit 0
STOP_AFTER_STAGE3=1 bash results/stages/levers/stages34.sh "$S1" checkpoints/stage2d "$S3" runs/stage4_qa_binding "$LOG" 0 0
