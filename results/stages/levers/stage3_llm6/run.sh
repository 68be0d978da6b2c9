#!/usr/bin/env bash
# Lever: does a stage 1 whose LLM answers more questions make stage 3 and 4 better? Stages 3 and 4
# on the 6-layer LLM of results/stages/levers/stage1_qa_long (4000 QA steps: colour 0.750, shape
# 0.638, size 0.783, position 0.516, motion 0.242 against the committed 3-layer stage 1's
# 0.645 / 0.603 / 0.776 / 0.297 / 0.165), everything else as scripts/reproduce_builtin.sh runs them;
# the recipe is train/recipes/stages.yaml with text.num_hidden_layers: 6 (recipe.yaml here).
#   bash results/stages/levers/stage3_llm6/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LOG=results/stages/levers/stage3_llm6 S1=${S1:-results/stages/levers/stage1_qa_long/stage1}
S3=runs/stage3_llm6 S4=runs/stage4_llm6
$PY -m train.stages.sa2va --stage1 "$S1" --stage2 checkpoints/stage2c --recipe "$LOG/recipe.yaml" --out "$S3" \
  --steps 1000 --set eval.every=250 --report '' --resume 2>&1 | tee -a "$LOG/stage3.txt"
cp "$S3/log.jsonl" "$LOG/stage3_log.jsonl"
[ "${STOP_AFTER_STAGE3:-0}" = 1 ] && exit 0
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --recipe "$LOG/recipe.yaml" --steps 300 --report '' \
  --resume 2>&1 | tee -a "$LOG/stage4.txt"
cp "$S4/log.jsonl" "$LOG/stage4_log.jsonl"
bash scripts/score_candidate.sh "$S4" 30 1 2 3
mkdir -p "$LOG/eval" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/*.json "$LOG/eval/"
