#!/usr/bin/env bash
# Lever: stage 4's grounding phase with the motion term (train.stages.grounding.motion_term: the
# keyframes' vision tokens after LLM layer 1 read how far the object under them moved since the
# previous keyframe), the rest as the committed stage 4 (its head pick copied, the loop 300 steps).
# The gate before the test splits: the grounding phase's held-out pick for expressions that name
# neither colour nor shape, then predict over the whole validation split through SAM2's memory.
#   bash results/stages/levers/motion/run.sh OUT4
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S4=$1
LOG=results/stages/levers/motion
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
mkdir -p "$S4" && [ -d "$S4/heads" ] || cp -r checkpoints/stage4/heads "$S4/"
$PY -m train.stages.reviosa --stage3 checkpoints/stage3 --out "$S4" --grounding-steps "${G4:-2000}" \
  --motion "${MOTION:-1}" --steps "${E4:-300}" --set data.soft_masks=true --set "$SLOW" --report '' --resume \
  2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage4.txt"
SPLIT=val bash scripts/score_candidate.sh "$S4" 40 0
[ "${STOP_AFTER_VAL:-0}" = 1 ] && exit 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
# The grounding phase alone for 4000 steps (does a longer phase let the role tokens use the motion?):
#   .venv/bin/python -m train.stages.grounding --init checkpoints/stage3/model --two-tokens --aml 1 \
#     --aml-layer 2 --aml-heads 2 0 3 1 --pool-from runs/g4m/grounding --motion 1 --steps 4000 --every 500 \
#     --out runs/g4m4k/grounding --resume                                      # grounding4k_records.json
# AML weighted 5x on expressions naming neither colour nor shape, with the motion term (the switch is
# not in the tree: aml_neither.patch, applied to a worktree):
#   .venv/bin/python -m train.stages.grounding ... --motion 1 --aml-neither 5 --steps 2000 --every 500 \
#     --out runs/g4n/grounding --resume                                # grounding_aml_neither_records.json
