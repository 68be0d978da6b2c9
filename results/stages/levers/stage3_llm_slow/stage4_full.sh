#!/usr/bin/env bash
# Stage 4 at the full LLM rate (the recipe's) from this lever's slow stage 3: stage 4 with the LLM
# slowed too scored 5 points under builtin on test seed 1 (stage4.txt, eval/), as if the two new
# role tokens need the LLM to move. Then the test splits (this session scored SEEDS="1 2").
# Resumable from runs/stage4_llm_slow_full, from the committed stage 3 (../stage4_score.sh).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
bash results/stages/levers/stage4_score.sh results/stages/levers/stage3_llm_slow \
  runs/stage3_llm_slow runs/stage4_llm_slow_full stage4_full eval_full
