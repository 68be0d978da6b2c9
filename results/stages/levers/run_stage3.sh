#!/usr/bin/env bash
# Stage-3 levers (docs/training.md, "Where the stages stand"), one after the other on 2 threads,
# from the committed stage-1/2 files, on stage 3's training clips (rendered by the stage-3 run):
# without the one-run prompt terms (the recipe before them: an 800-step schedule, stopped at step
# 420, then scored), with them (150 steps), and with the vision tower and projector unfrozen
# (stopped at step 94). Scores: the first 8 validation clips (train.evaluate.evaluate).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=2
PY=.venv/bin/python
S="--stage1 checkpoints/stage1 --stage2 checkpoints/stage2 --report "
PLAIN=(--set loss.grounding=0 --set loss.example=0 --set loss.distill=0 --set loss.contrast=0 --set loss.text=1)
for run in plain aux unfrozen; do mkdir -p runs/levers3/$run && ln -sfn "$PWD/checkpoints/stage3/data" runs/levers3/$run/data; done
timeout 760 $PY -m train.stages.sa2va $S "" --out runs/levers3/plain --steps 800 "${PLAIN[@]}" || true
$PY -m train export runs/levers3/plain --out runs/levers3/plain/model_step400
$PY -m train.stages.sa2va $S "" --out runs/levers3/aux --steps 150 --set eval.clips=8
timeout 240 $PY -m train.stages.sa2va $S "" --out runs/levers3/unfrozen --steps 150 "${PLAIN[@]}" \
  --set "stages=[{start: 0.0, lr_scale: {vision: 1, projector: 1, sam_encoder: 0, sam_other: 0}}]" || true
$PY -c "
from reviosa.hub import from_pretrained; from reviosa.data import InterRVOSDataset; from train.evaluate import evaluate
ds = InterRVOSDataset('checkpoints/stage3/data', 'val')
for name in ['runs/levers3/plain/model_step400', 'runs/levers3/aux/model', 'builtin']:
    print(name, evaluate(from_pretrained(name), ds, 8))
"
