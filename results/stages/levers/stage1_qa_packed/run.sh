#!/usr/bin/env bash
# Lever: a stage-1 LLM that binds words to objects better, from 5x the questions at the same cost.
# The QA phase now packs a clip's questions into one row (each turn sees the keyframes and itself
# only, so a row equals one row per question while the vision tokens go through the LLM once).
# QA_STEPS more QA steps from the committed stage 1 (3-layer LLM), 16 clips x up to 8 questions a
# step (the committed run: 8 x 3); then stages 3 and 4 on it as scripts/reproduce_builtin.sh runs
# them (stage 2d's SAM2). The gate before stage 4: stage 3's step-1000 validation Actor or RVOS
# J&F at least the committed stage 3's (38.7 / 44.7, checkpoints/stage3/log.jsonl); below both, stop.
# Resumable: each stage resumes from (or skips on) its folder.
#   bash results/stages/levers/stage1_qa_packed/run.sh [QA_STEPS]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${1:-2000} LOG=results/stages/levers/stage1_qa_packed
S1=runs/stage1_qa_packed S3=runs/stage3_qa_packed S4=runs/stage4_qa_packed
[ -f "$S1/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --phase qa --init checkpoints/stage1 \
  --qa-steps "$STEPS" --qa-clips 16 --qa-questions 8 --every 250 --report '' 2>&1 | tee "$LOG/stage1.txt"
cp "$S1/qa.json" "$LOG/" && mkdir -p "$LOG/stage1" && cp -r "$S1/mllm.safetensors" "$S1/tokenizer" "$LOG/stage1/"
[ "${STOP_AFTER_STAGE1:-0}" = 1 ] && exit 0
bash results/stages/levers/stages34.sh "$S1" checkpoints/stage2d "$S3" "$S4" "$LOG" 38.7 44.7
