#!/usr/bin/env bash
# Lever: stages 3 and 4 with the LLM at a tenth of the learning rate (the paper trains the LLM by
# LoRA, which keeps what pretraining taught it), on the names lever's stage 1 and checkpoints/stage2d.
# Resumable from runs/stage3_llm_slow and runs/stage4_llm_slow (stage 3's export is committed here).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
SLOW='stages=[{"start":0.0,"lr_scale":{"vision":0,"sam_encoder":0,"sam_other":0,"llm":0.1}}]'
SETS3="--set $SLOW" SETS4="--set $SLOW" bash results/stages/levers/stages34.sh \
  results/stages/levers/stage1_qa_names/stage1 checkpoints/stage2d \
  runs/stage3_llm_slow runs/stage4_llm_slow results/stages/levers/stage3_llm_slow 39.5 45.7
