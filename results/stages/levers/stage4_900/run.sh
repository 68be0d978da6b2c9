#!/usr/bin/env bash
# Stage 4 for 900 steps instead of 300, from the committed stage 3 (about 53 min on 2 threads);
# validation (12 clips, SAM2 through the memory) every 300 steps: eval.jsonl.
cd "$(dirname "$0")/../../../.."
OMP_NUM_THREADS=2 .venv/bin/python -m train.stages.reviosa --stage3 checkpoints/stage3 --out runs/stage4_900 \
  --steps 900 --set eval.every=300 --report ''
