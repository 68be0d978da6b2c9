#!/usr/bin/env bash
# Stage 4's loop for 900 steps instead of 300, from the committed stage 4's grounding phase and head
# pick (copied), the rest as scripts/reproduce_builtin.sh runs it; the loop's 12-clip validation
# through SAM2's memory every 300 steps (eval.jsonl), then predict over the 40 validation clips
# through the memory (val_scores_seed0.*). About 40 min on 2 threads, scoring 5 min.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
mkdir -p runs/g4c && cp -rn checkpoints/stage4/heads checkpoints/stage4/grounding runs/g4c/
OMP_NUM_THREADS=2 .venv/bin/python -m train.stages.reviosa --stage3 checkpoints/stage3 --out runs/g4c \
  --grounding-steps 2000 --steps 900 --set data.soft_masks=true --set "$SLOW" --set eval.every=300 --report '' --resume
SPLIT=val bash scripts/score_candidate.sh runs/g4c 40 0
