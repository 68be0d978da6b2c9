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
$PY -m train.stages.sa2va --stage1 checkpoints/stage1 --stage2 "$S2" --out "$S3" \
  --steps 1000 --set eval.every=250 --report '' --resume 2>&1 | tee -a "$LOG/stage3.txt"
cp "$S3/log.jsonl" "$LOG/stage3_log.jsonl"
$PY -c 'import sys; from pathlib import Path; from train.stages.finetune import last_eval
e = last_eval(Path(sys.argv[1])); a, r, a0, r0 = e["actor_JF"], e["rvos_JF"], 34.98, 42.09
print(f"gate: stage 3 Actor/RVOS J&F {a:.1f}/{r:.1f} against the old stage 3 {a0:.1f}/{r0:.1f}")
sys.exit(0 if a >= a0 or r >= r0 else 1)' "$S3"
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 --report '' \
  --resume 2>&1 | tee -a "$LOG/stage4.txt"
cp "$S4/log.jsonl" "$LOG/stage4_log.jsonl"
bash scripts/score_candidate.sh "$S4" 30 1 2 3
mkdir -p "$LOG/eval" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/scores_*.json "$LOG/eval/"
