#!/usr/bin/env bash
# Stage 4 from the committed stage 3 with the role-pair term (loss.role_pair=5), 300 steps, the
# committed head selection; the run folder is not committed (log.jsonl copied here).
set -euo pipefail
mkdir -p runs/stage4_pair && cp -r checkpoints/stage4/heads runs/stage4_pair/
OMP_NUM_THREADS=2 .venv/bin/python -m train.stages.reviosa --stage3 checkpoints/stage3 \
    --out runs/stage4_pair --steps 300 --set loss.role_pair=5 --report '' --resume
