#!/usr/bin/env bash
# Lever: stage 1's tower taught each token its own grid cell (--tower-position), from the committed
# tower, then the QA phase, the position probe, stage 3 and stage 4 on it, scored as the built-in
# candidate is. Every step resumes from its folder (runs/ is not committed: from a fresh clone the
# chain starts again from checkpoints/stage1).
#   bash results/stages/levers/stage1_position/run.sh [STAGE4_SETS...]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S1=runs/stage1_pos S3=runs/stage3_pos S4=runs/stage4_pos
LOG=results/stages/levers/stage1_position
[ -f "$S1/vision.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --phase tower --init checkpoints/stage1 \
  --tower-steps 3000 --tower-lr 3e-4 --tower-position 1 --every 500 --val-scenes 256 --report ''
cp "$S1/vision.json" "$LOG/"
[ -f "$S1/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --phase qa --qa-steps 1500 --report ''
cp "$S1"/qa*.json "$LOG/" 2>/dev/null || true
$PY -m train.probes.token_position --mllm "$S1/mllm.safetensors" | tee "$LOG/token_position.txt"
[ "${STOP_AFTER_STAGE1:-0}" = 1 ] && exit 0
$PY -m train.stages.sa2va --stage1 "$S1" --stage2 checkpoints/stage2c --out "$S3" --steps 1000 \
  --set eval.every=250 --report '' --resume
cp "$S3/log.jsonl" "$LOG/stage3_log.jsonl"
SETS=()
for s in "$@"; do SETS+=(--set "$s"); done
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 --report '' --resume "${SETS[@]}"
cp "$S4/log.jsonl" "$LOG/stage4_log.jsonl"
bash scripts/score_candidate.sh "$S4" 30 1 2 3
mkdir -p "$LOG/eval" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/*.json "$LOG/eval/"
