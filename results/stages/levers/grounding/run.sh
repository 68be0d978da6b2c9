#!/usr/bin/env bash
# Lever: stages 3 and 4 each open with the grounding phase (train.stages.grounding: role prompts
# taught to pick their referent among their clip's objects' example prompts, SAM2's decoder out of
# the loop), then the loop end to end with soft mask targets and the LLM at a tenth of the rate;
# on the names lever's stage 1 and the attribute-reading stage 2 (STAGE2). Each step resumes from
# its folder; the gate before the test splits is per-frame predict over the whole validation split.
#   bash results/stages/levers/grounding/run.sh STAGE2 OUT3 OUT4
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S1=results/stages/levers/stage1_qa_names/stage1
S2=$1 S3=$2 S4=$3
LOG=results/stages/levers/grounding
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
$PY -m train.stages.sa2va --stage1 "$S1" --stage2 "$S2" --out "$S3" --grounding-steps "${G3:-2500}" \
  --steps "${E3:-400}" --set data.soft_masks=true --set "$SLOW" --set eval.every=200 --report '' --resume \
  2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage3.txt"
SPLIT=val bash scripts/score_candidate.sh "$S3" 40 0
[ "${STOP_AFTER_STAGE3:-0}" = 1 ] && exit 0
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --grounding-steps "${G4:-2000}" --steps "${E4:-300}" \
  --set data.soft_masks=true --set "$SLOW" --report '' --resume 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage4.txt"
SPLIT=val bash scripts/score_candidate.sh "$S4" 40 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
