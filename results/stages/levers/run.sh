#!/usr/bin/env bash
# Stage-2 levers, short runs side by side in time (one after the other): SAM2 input 128 vs 256.
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
for size in 128 256; do
  .venv/bin/python -m train.stages.sam_pretrain --out runs/levers/sam$size --model sam.image_size=$size \
    --steps 150 --every 50 --val-clips 16 --report "" > runs/levers/sam$size.log 2>&1
done
