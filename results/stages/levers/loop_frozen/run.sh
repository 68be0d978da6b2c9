#!/usr/bin/env bash
# Lever: stage 4's loop with the language side frozen. The installed loop (LLM at 0.1 of the rate,
# embeddings, lm_head and prompt MLP at the full rate) lowers the grounding phase's held-out pick
# from 0.838 to 0.817 (shape only 0.924 / 0.939 -> 0.864 / 0.849; results/stages/levers/oracle/),
# while SAM2 from the true objects' example prompts would score 82-84 on validation: the loop should
# fit SAM2's decoder to the role prompts, not move them. Here only the decoder trains (LLM,
# embeddings, lm_head, prompt MLP at 0), 300 steps from a finished grounding phase.
#   bash results/stages/levers/loop_frozen/run.sh GROUNDING_RUN OUT4
# GROUNDING_RUN: a stage-4 run whose grounding/model/ is exported (e.g. runs/g4rq).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SRC=$1
S4=$2
LOG=results/stages/levers/loop_frozen
FROZEN='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0,"embeddings":0,"lm_head":0,"prompt_mlp":0}}]'
mkdir -p "$S4/grounding" && [ -d "$S4/heads" ] || cp -r checkpoints/stage4/heads "$S4/"
[ -d "$S4/grounding/model" ] || cp -r "$SRC/grounding/model" "$S4/grounding/"
cp "$SRC/grounding/records.json" "$S4/grounding/" 2>/dev/null || true
# the grounding phase is found exported and skipped; the loop runs from its export
$PY -m train.stages.reviosa --stage3 checkpoints/stage3 --out "$S4" --grounding-steps 4000 \
  --steps "${E4:-300}" --set data.soft_masks=true --set "$FROZEN" \
  --report '' --resume 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage4_$(basename "$S4").txt"
SPLIT=val bash scripts/score_candidate.sh "$S4" 40 0
[ "${STOP_AFTER_VAL:-0}" = 1 ] && exit 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
