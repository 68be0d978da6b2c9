#!/usr/bin/env bash
# Stage 4 and the test splits on a lever's committed stage 3 (LOG/stage3: model/, log.jsonl,
# train_config.json; copied back into S3 when runs/ lacks it, so a fresh session resumes here
# without running stage 3 again):
#   bash results/stages/levers/stage4_score.sh LOG S3 S4 TAG EVAL
# writes LOG/TAG.txt, LOG/TAG_log.jsonl, LOG/TAG/ (heads/, train_config.json) and LOG/EVAL/ (the
# per-frame scores and breakdowns). SETS4: extra stage-4 arguments, split on spaces; SEEDS: the
# test splits (default 1 2 3); SCORE=0 stops before scoring. Resumable from S4.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LOG=$1 S3=$2 S4=$3 TAG=$4 EVAL=$5
read -r -a SETS4 <<< "${SETS4:-}"
read -r -a SEEDS <<< "${SEEDS:-1 2 3}"
[ -f "$S3/model/model.safetensors" ] || { mkdir -p "$S3" && cp -r "$LOG"/stage3/* "$S3"/; }
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 "${SETS4[@]}" --report '' --resume 2>&1 \
  | tee -a "$LOG/$TAG.txt"
cp "$S4/log.jsonl" "$LOG/${TAG}_log.jsonl"
mkdir -p "$LOG/$TAG" && cp -r "$S4/heads" "$S4/train_config.json" "$LOG/$TAG/"
[ "${SCORE:-1}" = 1 ] || exit 0
bash scripts/score_candidate.sh "$S4" 30 "${SEEDS[@]}"
mkdir -p "$LOG/$EVAL" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/scores_*.json "$LOG/$EVAL/"
