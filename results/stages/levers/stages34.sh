#!/usr/bin/env bash
# Stages 3 and 4 of a lever, as scripts/reproduce_builtin.sh runs them, then the three test splits:
#   bash results/stages/levers/stages34.sh STAGE1 STAGE2 OUT3 OUT4 LOG ACTOR0 RVOS0
# The gate before stage 4: stage 3's last validation Actor or RVOS J&F at least ACTOR0 / RVOS0 (the
# stage 3 it competes with); below both, stop. STOP_AFTER_STAGE3=1 stops after stage 3.
# Resumable: each stage resumes from its folder. Logs go to LOG (stage3.txt, stage3_log.jsonl, ...).
# SETS3 / SETS4: extra arguments for stage 3 / stage 4, split on spaces ("--set k=v --set k2=v2");
# stage 4 and the test splits are stage4_score.sh's.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S1=$1 S2=$2 S3=$3 S4=$4 LOG=$5 A0=$6 R0=$7
read -r -a SETS3 <<< "${SETS3:-}"
$PY -m train.stages.sa2va --stage1 "$S1" --stage2 "$S2" --out "$S3" \
  --steps 1000 --set eval.every=250 "${SETS3[@]}" --report '' --resume 2>&1 | tee -a "$LOG/stage3.txt"
cp "$S3/log.jsonl" "$LOG/stage3_log.jsonl"
[ "${STOP_AFTER_STAGE3:-0}" = 1 ] && exit 0
$PY -c 'import sys; from pathlib import Path; from train.stages.finetune import last_eval
e = last_eval(Path(sys.argv[1])); a, r, a0, r0 = e["actor_JF"], e["rvos_JF"], float(sys.argv[2]), float(sys.argv[3])
print(f"gate: stage 3 Actor/RVOS J&F {a:.1f}/{r:.1f} against {a0:.1f}/{r0:.1f}")
sys.exit(0 if a >= a0 or r >= r0 else 1)' "$S3" "$A0" "$R0"
bash results/stages/levers/stage4_score.sh "$LOG" "$S3" "$S4" stage4 eval  # reads SETS4 itself
