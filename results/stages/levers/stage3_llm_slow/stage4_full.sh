#!/usr/bin/env bash
# Stage 4 at the full LLM rate (the recipe's) from this lever's slow stage 3: stage 4 with the LLM
# slowed too scored 5 points under builtin on test seed 1 (stage4.txt, eval/), as if the two new
# role tokens need the LLM to move. Then the three test splits. Resumable from runs/stage4_llm_slow_full;
# stage 3 comes from runs/stage3_llm_slow or, in a fresh clone, from its committed export here.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
L=results/stages/levers/stage3_llm_slow S3=runs/stage3_llm_slow S4=runs/stage4_llm_slow_full
[ -f "$S3/model/model.safetensors" ] || { mkdir -p "$S3" && cp -r "$L"/stage3/* "$S3"/; }
$PY -m train.stages.reviosa --stage3 "$S3" --out "$S4" --steps 300 --report '' --resume 2>&1 | tee -a "$L/stage4_full.txt"
cp "$S4/log.jsonl" "$L/stage4_full_log.jsonl"
bash scripts/score_candidate.sh "$S4" 30 ${SEEDS:-1 2 3}
mkdir -p "$L/eval_full" && cp "$S4"/per_frame/eval/*.txt "$S4"/per_frame/eval/scores_*.json "$L/eval_full/"
