#!/usr/bin/env bash
# Lever: a longer stage 2c. Its example-prompt IoU (the mask SAM2 draws from an object's own
# features pooled under its true mask, the best a role prompt can do) was 0.165 / 0.400 / 0.450 /
# 0.499 at steps 100-400 and still rising, and it caps every later score (stage 3-4's role prompts
# reach 0.31 of its 0.53). STEPS more steps of the third phase from checkpoints/stage2c (a fresh
# warm-up and cosine at the recipe's rate; --seed 1 so prompts and strides are new draws; step 0 of
# records.json is checkpoints/stage2c on these held-out clips). Resumable (--resume).
#   bash results/stages/levers/stage2c_long/run.sh [STEPS]
# Installed: scripts/reproduce_builtin.sh now runs it as stage 2d; its weights, log, records and
# click probe moved to checkpoints/stage2d/ (this folder keeps the script and the lost first run's log).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${1:-600} OUT=runs/stage2c_long LOG=results/stages/levers/stage2c_long
[ -f "$OUT/done" ] || { $PY -m train.stages.sam_pretrain --out "$OUT" --init checkpoints/stage2c/sam.safetensors \
  --steps "$STEPS" --every 100 --val-clips 24 --objects 3 --frame-clicks --world --examples --seed 1 \
  --report '' --resume 2>&1 | tee -a "$LOG/log.txt" && touch "$OUT/done"; }
cp "$OUT/records.json" "$LOG/"
$PY -m train.probes.sam_clicks --sam "$OUT/sam.safetensors" | tee "$LOG/sam_clicks.txt"
