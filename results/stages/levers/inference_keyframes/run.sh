#!/usr/bin/env bash
# Lever: the installed stage 4 (trained on 4 keyframes) shown K keyframes at inference instead, scored
# on the validation split through SAM2's memory (a copy of checkpoints/stage4/model with
# processor.num_keyframes = K, in runs/kfK/model).
#   bash results/stages/levers/inference_keyframes/run.sh K
set -euo pipefail
cd "$(dirname "$0")/../../../.."
K=$1
mkdir -p "runs/kf$K/model" && cp checkpoints/stage4/model/* "runs/kf$K/model/"
.venv/bin/python -c 'import sys; from reviosa.config import ReviosaConfig
c = ReviosaConfig.load(sys.argv[1]); c.processor.num_keyframes = int(sys.argv[2]); c.save(sys.argv[1])' "runs/kf$K/model" "$K"
SPLIT=val bash scripts/score_candidate.sh "runs/kf$K" 40 0
cp "runs/kf$K/eval/val_scores_seed0.txt" "results/stages/levers/inference_keyframes/val_scores_k$K.txt"
cp "runs/kf$K/eval/val_breakdown_seed0.txt" "results/stages/levers/inference_keyframes/val_breakdown_k$K.txt"
