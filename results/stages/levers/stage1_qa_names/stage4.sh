#!/usr/bin/env bash
# Stage 4 and the test splits on this lever's stage 3, from what is committed: the stage-3 export
# (LOG/stage3: model/, log.jsonl, train_config.json) is copied back into runs/ when runs/ lacks it,
# so a fresh session resumes here without running stage 3 again.
#   bash results/stages/levers/stage1_qa_names/stage4.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LOG=results/stages/levers/stage1_qa_names S3=runs/stage3_qa_names S4=runs/stage4_qa_names
[ -f "$S3/model/model.safetensors" ] || { mkdir -p "$S3" && cp -r "$LOG"/stage3/* "$S3"/; }
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 --report '' --resume 2>&1 | tee -a "$LOG/stage4.txt"
cp "$S4/log.jsonl" "$LOG/stage4_log.jsonl"
mkdir -p "$LOG/stage4" && cp -r "$S4/heads" "$S4/train_config.json" "$LOG/stage4/"
[ "${SCORE:-1}" = 1 ] || exit 0
bash scripts/score_candidate.sh "$S4" 30 1 2 3
mkdir -p "$LOG/eval" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/scores_*.json "$LOG/eval/"
