#!/usr/bin/env bash
# Lever: make the answer position know what its question names. The binding stage 1
# (results/stages/levers/stage1_qa_binding) put its last layer's heads 0-1 on objects, not on the
# one named, and its answer position read the question's own colour / shape at 0.55 / 0.54
# (train.probes.qa_binding --names). Here the name term (`--qa-names`) asks a linear head to read
# that colour and shape from the answer position's state after layer 1 (the last layer's input),
# beside the answer loss and the binding term; STEPS more packed QA steps from the binding stage 1.
# Then the probe; then (RUN_STAGE3=1) stage 3 on it.
#   bash results/stages/levers/stage1_qa_names/run.sh [STEPS] [WEIGHT]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${1:-1500} WEIGHT=${2:-1.0} LOG=results/stages/levers/stage1_qa_names
S1=runs/stage1_qa_names S3=runs/stage3_qa_names
[ -f "$S1/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --phase qa \
  --init results/stages/levers/stage1_qa_binding/stage1 --qa-steps "$STEPS" --qa-clips 16 --qa-questions 8 \
  --qa-attention 1.0 --qa-names "$WEIGHT" --qa-names-layer 1 --every 250 --report '' 2>&1 | tee "$LOG/stage1.txt"
cp "$S1/qa.json" "$LOG/" && mkdir -p "$LOG/stage1" && cp -r "$S1/mllm.safetensors" "$S1/tokenizer" "$LOG/stage1/"
[ -f "$LOG/probe.txt" ] || OMP_NUM_THREADS=1 $PY -m train.probes.qa_binding --mllm "$LOG/stage1/mllm.safetensors" \
  --names 400 2>&1 | tee "$LOG/probe.txt"
[ "${RUN_STAGE3:-0}" = 1 ] || exit 0
STOP_AFTER_STAGE3=${STOP_AFTER_STAGE3:-1} bash results/stages/levers/stages34.sh "$S1" checkpoints/stage2d "$S3" runs/stage4_qa_names "$LOG" 38.7 44.7
