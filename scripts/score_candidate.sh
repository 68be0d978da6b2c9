#!/usr/bin/env bash
# Score a stage-4 run as the built-in candidate is scored: its export run per frame (as builtin
# ships) on the 30-clip test splits of seeds 1-3, with the shape/motion breakdown.
#   bash scripts/score_candidate.sh RUN [CLIPS] [SEEDS...]
# writes RUN/per_frame/ (the export with sam.propagation per_frame) and RUN/per_frame/eval/;
# test splits are rendered once into runs/test_clipsC_seedS/. A split already scored is skipped.
# SPLIT=val scores the validation split instead (stage 3's own: SPLIT=val ... RUN 40 0), its files
# named val_*: the gate a lever passes before the test splits.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1
CLIPS=${2:-30}
shift $(( $# > 1 ? 2 : 1 ))
SEEDS=${*:-1 2 3}
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PF=$RUN/per_frame
if [ ! -f "$PF/model.safetensors" ]; then
  rm -rf "$PF" && mkdir -p "$PF" && cp "$RUN"/model/* "$PF"/
  $PY -c 'import sys; from reviosa.config import ReviosaConfig
c = ReviosaConfig.load(sys.argv[1]); c.sam.propagation = "per_frame"; c.save(sys.argv[1])' "$PF"
fi
mkdir -p "$PF/eval"
SPLIT=${SPLIT:-test}
P=$([ "$SPLIT" = test ] && echo "" || echo "${SPLIT}_")
for seed in $SEEDS; do
  data=runs/${SPLIT}_clips${CLIPS}_seed$seed
  pred=$PF/eval/${P}seed$seed.results.json
  [ -d "$data/$SPLIT" ] || $PY -m reviosa synth --out "$data" --split "$SPLIT" --clips "$CLIPS" --seed "$seed"
  [ -f "$PF/eval/${P}scores_seed$seed.json" ] && continue
  $PY -m reviosa predict --dataset "$data" --split "$SPLIT" --model "$PF" --out "$pred"
  $PY -m reviosa evaluate --gt "$data" --split "$SPLIT" --pred "$pred" \
    --json "$PF/eval/${P}scores_seed$seed.json" | tee "$PF/eval/${P}scores_seed$seed.txt"
  $PY -m train.probes.probe_words breakdown --gt "$data" --split "$SPLIT" --pred "$pred" \
    > "$PF/eval/${P}breakdown_seed$seed.txt"
done
