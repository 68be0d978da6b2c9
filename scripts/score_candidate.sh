#!/usr/bin/env bash
# Score a stage-4 run as the built-in candidate is scored: its export run per frame (as builtin
# ships) on the 30-clip test splits of seeds 1-3, with the shape/motion breakdown.
#   bash scripts/score_candidate.sh RUN [CLIPS] [SEEDS...]
# writes RUN/per_frame/ (the export with sam.propagation per_frame) and RUN/per_frame/eval/;
# test splits are rendered once into runs/test_clipsC_seedS/. A split already scored is skipped.
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
for seed in $SEEDS; do
  data=runs/test_clips${CLIPS}_seed$seed
  pred=$PF/eval/seed$seed.results.json
  [ -d "$data/test" ] || $PY -m reviosa synth --out "$data" --split test --clips "$CLIPS" --seed "$seed"
  [ -f "$PF/eval/scores_seed$seed.json" ] && continue
  $PY -m reviosa predict --dataset "$data" --split test --model "$PF" --out "$pred"
  $PY -m reviosa evaluate --gt "$data" --split test --pred "$pred" \
    --json "$PF/eval/scores_seed$seed.json" | tee "$PF/eval/scores_seed$seed.txt"
  $PY -m train.probes.probe_words breakdown --gt "$data" --split test --pred "$pred" > "$PF/eval/breakdown_seed$seed.txt"
done
