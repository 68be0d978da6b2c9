#!/usr/bin/env bash
# Lever: stage 4's grounding phase with the role and role query terms (and the motion term), 4000
# steps, then the loop as the committed stage 4 (its head pick copied, 300 steps).
# train.stages.grounding.role_term: the keyframes' vision tokens after LLM layer 1 read which side
# of an interaction the object under them is on; role_query_term: each role token's state after the
# same layer reads, through the same head, which side its referent is on.
# The gate before the test splits: the grounding phase's held-out pick for expressions that name
# neither colour nor shape, then predict over the whole validation split through SAM2's memory.
#   bash results/stages/levers/roles/run.sh OUT4
# SEED=1 draws the grounding phase's clips and turns from another seed (the replicate, runs/g4rq_s1;
# its logs go to grounding_seed1.txt / stage4_seed1.txt). ROLES=W weighs the role term W instead of 1
# (logs grounding_rolesW.txt / stage4_rolesW.txt). G4=N runs the grounding phase N steps instead of 4000
# (logs grounding_gN.txt / stage4_gN.txt). NEITHER=W draws the grounding phase's turns that name neither
# colour nor shape W times as likely (logs grounding_neitherW.txt / stage4_neitherW.txt).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S4=$1
LOG=results/stages/levers/roles
ROLES=${ROLES:-1}
TAG=${SEED:+_seed$SEED}$([ "$ROLES" = 1 ] || echo "_roles$ROLES")$([ "${G4:-4000}" = 4000 ] || echo "_g$G4")$([ "${NEITHER:-1}" = 1 ] || echo "_neither$NEITHER")
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
mkdir -p "$S4" && [ -d "$S4/heads" ] || cp -r checkpoints/stage4/heads "$S4/"
# the grounding phase alone (its log and held-out records; the clip pools of an earlier run reused):
$PY -m train.stages.grounding --init checkpoints/stage3/model --two-tokens --aml 1 --aml-layer 2 \
  --aml-heads 2 0 3 1 --pool-from "${POOLS:-checkpoints/stage3/grounding}" --motion 1 --roles "$ROLES" --role-query 1 \
  --neither-weight "${NEITHER:-1}" --steps "${G4:-4000}" --every 500 --seed "${SEED:-0}" --out "$S4/grounding" --resume 2>&1 | grep --line-buffered -v Warning \
  | tee -a "$LOG/grounding$TAG.txt"
# then the loop from its export (the grounding phase above is found done and skipped):
$PY -m train.stages.reviosa --stage3 checkpoints/stage3 --out "$S4" --grounding-steps "${G4:-4000}" \
  --motion 1 --roles "$ROLES" --role-query 1 --neither-weight "${NEITHER:-1}" --steps "${E4:-300}" --set data.soft_masks=true --set "$SLOW" \
  --report '' --resume 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG/stage4$TAG.txt"
SPLIT=val bash scripts/score_candidate.sh "$S4" 40 0
[ "${STOP_AFTER_VAL:-0}" = 1 ] && exit 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
