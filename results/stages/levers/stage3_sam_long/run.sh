#!/usr/bin/env bash
# Lever: does a SAM2 that draws better masks from example prompts make stages 3 and 4 better?
# results/stages/levers/stage2c_long raised the example-prompt IoU on stage 2c's 24 held-out clips
# from 0.526 to 0.648 (J&F 74.9 -> 80.4, click probe IoU 0.681 -> 0.700). Stages 3 and 4 on its
# SAM2, everything else as scripts/reproduce_builtin.sh runs them (committed 3-layer stage 1, the
# recipe's defaults). The gate before stage 4: stage 3's step-1000 validation Actor or RVOS J&F at
# least the committed stage 3's (34.98 / 42.09, checkpoints/stage3/log.jsonl); below both, stop.
# Resumable: each stage resumes from its folder, and stage 2c_long's run.sh skips a finished run.
#   bash results/stages/levers/stage3_sam_long/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
LOG=results/stages/levers/stage3_sam_long S2=runs/stage2c_long S3=runs/stage3_sam_long S4=runs/stage4_sam_long
[ -f "$S2/done" ] || bash results/stages/levers/stage2c_long/run.sh
$PY -m train.stages.sa2va --stage1 checkpoints/stage1 --stage2 "$S2" --out "$S3" \
  --steps 1000 --set eval.every=250 --report '' --resume 2>&1 | tee -a "$LOG/stage3.txt"
cp "$S3/log.jsonl" "$LOG/stage3_log.jsonl"
$PY - "$S3/log.jsonl" checkpoints/stage3/log.jsonl <<'PY'
import json, sys
def last(path):
    evals = [r["eval"] for r in map(json.loads, open(path)) if "eval" in r]
    return evals[-1]["actor_JF"], evals[-1]["rvos_JF"]
new, old = last(sys.argv[1]), last(sys.argv[2])
print(f"gate: stage 3 Actor/RVOS J&F {new[0]:.1f}/{new[1]:.1f} against committed {old[0]:.1f}/{old[1]:.1f}")
sys.exit(0 if new[0] >= old[0] or new[1] >= old[1] else 1)
PY
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 --report '' \
  --resume 2>&1 | tee -a "$LOG/stage4.txt"
cp "$S4/log.jsonl" "$LOG/stage4_log.jsonl"
bash scripts/score_candidate.sh "$S4" 30 1 2 3
mkdir -p "$LOG/eval" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/scores_*.json "$LOG/eval/"
