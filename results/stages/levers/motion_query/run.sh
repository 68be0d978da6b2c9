#!/usr/bin/env bash
# Lever: stage 4's grounding phase as installed (motion, role and role query terms, 4000 steps) plus
# the motion query term (MQ, default 1) and the MLLM's vision tower trained at VISION x the lr
# (default 0.1; 0: frozen as before), then the loop as the committed stage 4 (300 steps).
# train.stages.grounding.motion_query_term: the motion head reads, from the [SEG_ACT] state of an
# expression naming a direction, its referent's move; vision_lr_scale: the tower may learn what the
# dense terms ask of it (who is near whom), which a frozen tower gives the LLM only in part.
# The gate before the test splits: the grounding phase's held-out pick by what an expression names,
# then predict over the whole validation split through SAM2's memory.
#   MQ=1 VISION=0.1 bash results/stages/levers/motion_query/run.sh OUT4
# Logs: results/stages/levers/motion_query/grounding_$TAG.txt, stage4_$TAG.txt (TAG=mqMQ_visionVISION).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S4=$1
MQ=${MQ:-1}
VISION=${VISION:-0.1}
LOG=results/stages/levers/motion_query
TAG=mq${MQ}_vision${VISION}
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
TERMS=(--motion 1 --roles 1 --role-query 1 --motion-query "$MQ" --vision-lr-scale "$VISION")
mkdir -p "$S4" && [ -d "$S4/heads" ] || cp -r checkpoints/stage4/heads "$S4/"
$PY -m train.stages.grounding --init checkpoints/stage3/model --two-tokens --aml 1 --aml-layer 2 \
  --aml-heads 2 0 3 1 --pool-from "${POOLS:-checkpoints/stage3/grounding}" "${TERMS[@]}" \
  --steps "${G4:-4000}" --every 500 --seed "${SEED:-0}" --out "$S4/grounding" --resume 2>&1 | grep --line-buffered -v Warning \
  | tee -a "$LOG/grounding_$TAG.txt"
[ "${STOP_AFTER_GROUNDING:-0}" = 1 ] && exit 0
$PY -m train.stages.reviosa --stage3 checkpoints/stage3 --out "$S4" --grounding-steps "${G4:-4000}" \
  "${TERMS[@]}" --steps "${E4:-300}" --set data.soft_masks=true --set "$SLOW" \
  --report '' --resume 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage4_$TAG.txt"
SPLIT=val bash scripts/score_candidate.sh "$S4" 40 0
[ "${STOP_AFTER_VAL:-0}" = 1 ] && exit 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
