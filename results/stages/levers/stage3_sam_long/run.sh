#!/usr/bin/env bash
# Lever: does a SAM2 that draws better masks from example prompts make stages 3 and 4 better?
# results/stages/levers/stage2c_long raised the example-prompt IoU on stage 2c's 24 held-out clips
# from 0.526 to 0.648 (J&F 74.9 -> 80.4, click probe IoU 0.681 -> 0.700). Stages 3 and 4 on its
# SAM2, everything else as scripts/reproduce_builtin.sh runs them (committed 3-layer stage 1, the
# recipe's defaults). The gate before stage 4: stage 3's step-1000 validation Actor or RVOS J&F at
# least the stage 3 committed before it (34.98 / 42.09, checkpoints/stage3/log.jsonl at commit
# c171ce3, replaced by this lever's stage 3 since); below both, stop.
# Resumable: each stage resumes from its folder.
#   bash results/stages/levers/stage3_sam_long/run.sh
# Installed: its stage 3 and 4 are checkpoints/stage3 and checkpoints/stage4, its stage-4 per-frame
# export is reviosa/builtin; the SAM2 it trained on is checkpoints/stage2d/sam.safetensors.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LOG=results/stages/levers/stage3_sam_long S2=checkpoints/stage2d S3=runs/stage3_sam_long S4=runs/stage4_sam_long
# its SAM2 is committed there (scripts/reproduce_builtin.sh trains it again as stage 2d when missing)
bash results/stages/levers/stages34.sh checkpoints/stage1 "$S2" "$S3" "$S4" "$LOG" 34.98 42.09
