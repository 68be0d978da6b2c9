#!/usr/bin/env bash
# Stage 4 and the test splits on this lever's committed stage 3 (../stage4_score.sh says how).
#   bash results/stages/levers/stage1_qa_names/stage4.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
bash results/stages/levers/stage4_score.sh results/stages/levers/stage1_qa_names \
  runs/stage3_qa_names runs/stage4_qa_names stage4 eval
