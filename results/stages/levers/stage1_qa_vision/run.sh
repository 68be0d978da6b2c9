#!/usr/bin/env bash
# Stage 1's QA phase continued for 600 steps from checkpoints/stage1 with the vision tower and
# projector trained too (lr 3e-4; the LLM at 1e-3): about 8.5 min on 2 threads; log.txt, qa.json.
# Then the tokens' position probe on both towers.
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=2
.venv/bin/python -m train.stages.vl_pretrain --out runs/s1b_vis --phase qa --init checkpoints/stage1 \
  --qa-steps 600 --qa-vision-lr 3e-4 --every 200 --report ''
for f in checkpoints/stage1 runs/s1b_vis; do
  .venv/bin/python -m train.probes.token_position --mllm $f/mllm.safetensors
done
