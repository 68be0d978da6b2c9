#!/usr/bin/env bash
# Score a stage-4 run as the built-in candidate is scored: its export through SAM2's memory (as
# builtin ships) on the 30-clip test splits of seeds 1-3, with the shape/motion breakdown.
#   bash scripts/score_candidate.sh RUN [CLIPS] [SEEDS...]
# scores RUN/model/ into RUN/eval/; PROPAGATION=per_frame scores the same weights with SAM2 run per
# frame instead (RUN/per_frame/, the export with sam.propagation per_frame, into RUN/per_frame/eval/).
# Test splits are rendered once into runs/test_clipsC_seedS/. A split already scored is skipped.
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
if [ "${PROPAGATION:-memory}" = per_frame ]; then
  MODEL=$RUN/per_frame
  EVAL=$MODEL/eval
  if [ ! -f "$MODEL/model.safetensors" ]; then
    rm -rf "$MODEL" && mkdir -p "$MODEL" && cp "$RUN"/model/* "$MODEL"/
    $PY -c 'import sys; from reviosa.config import ReviosaConfig
c = ReviosaConfig.load(sys.argv[1]); c.sam.propagation = "per_frame"; c.save(sys.argv[1])' "$MODEL"
  fi
else
  MODEL=$RUN/model
  EVAL=$RUN/eval
fi
mkdir -p "$EVAL"
SPLIT=${SPLIT:-test}
P=$([ "$SPLIT" = test ] && echo "" || echo "${SPLIT}_")
for seed in $SEEDS; do
  data=runs/${SPLIT}_clips${CLIPS}_seed$seed
  pred=$EVAL/${P}seed$seed.results.json
  [ -d "$data/$SPLIT" ] || $PY -m reviosa synth --out "$data" --split "$SPLIT" --clips "$CLIPS" --seed "$seed"
  [ -f "$EVAL/${P}scores_seed$seed.json" ] && continue
  $PY -m reviosa predict --dataset "$data" --split "$SPLIT" --model "$MODEL" --out "$pred"
  $PY -m reviosa evaluate --gt "$data" --split "$SPLIT" --pred "$pred" \
    --json "$EVAL/${P}scores_seed$seed.json" | tee "$EVAL/${P}scores_seed$seed.txt"
  $PY -m train.probes.probe_words breakdown --gt "$data" --split "$SPLIT" --pred "$pred" \
    > "$EVAL/${P}breakdown_seed$seed.txt"
done
