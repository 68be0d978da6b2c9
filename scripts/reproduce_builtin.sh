#!/usr/bin/env bash
# Reproduce the built-in model in stages, as the paper trains ReVIOSa (train/stages/):
#   1 vl_pretrain  (vision tower + projector, then the LLM on questions)  -> checkpoints/stage1/
#   2 sam_pretrain (promptable SAM2 with its memory)                       -> checkpoints/stage2/
#   3 sa2va        (one [SEG], towers frozen, on RVOS)                     -> RUN/stage3/
#   4 reviosa      ([SEG_ACT]/[SEG_TAR] + AML on heads picked on stage 3)  -> RUN/stage4/
#   then predict --dataset + evaluate on fresh test splits of two seeds, and
#   5 ablation     (Table 4: four variants from stage 3, three seeds)      -> RUN/stage5/
# Every stage resumes from what its folder holds (stages 1-2 write into the committed
# checkpoints/ folders, so a session can commit them and the next one carries on); each writes its
# section of results/stages/report.md. Sizes: docs/training.md ("The stages").
# Usage: scripts/reproduce_builtin.sh [RUN_DIR] [TEST_CLIPS] [INSTALL]
#   INSTALL=1 copies the stage-4 model to reviosa/builtin (do it only when it beats the shipped one).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/stages}
CLIPS=${2:-30}   # the README's scores are on 30-clip splits
INSTALL=${3:-0}
PY=.venv/bin/python
S1=checkpoints/stage1
S2=checkpoints/stage2
# One thread: on the shared 2-core machine a second OpenMP thread mostly spins (FACTS.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

[ -f "$S1/mllm.safetensors" ] || $PY -m train.stages.vl_pretrain --out "$S1" --tower-steps 12000 --qa-steps 1500
[ -f "$S2/done" ] || { $PY -m train.stages.sam_pretrain --out "$S2" --steps 3000 --resume && touch "$S2/done"; }
$PY -m train.stages.sa2va --stage1 "$S1" --stage2 "$S2" --out "$RUN/stage3" --steps 600
$PY -m train.stages.reviosa --stage3 "$RUN/stage3" --out "$RUN/stage4" --steps 600

MODEL=$RUN/stage4/model
mkdir -p "$MODEL/eval"
for seed in 1 2; do
  data=$RUN/test_seed$seed
  [ -d "$data/test" ] || $PY -m reviosa synth --out "$data" --split test --clips "$CLIPS" --seed "$seed"
  $PY -m reviosa predict --dataset "$data" --split test --model "$MODEL" --out "$RUN/results_seed$seed.json"
  $PY -m reviosa evaluate --gt "$data" --split test --pred "$RUN/results_seed$seed.json" \
    --json "$MODEL/eval/scores_seed$seed.json" | tee "$MODEL/eval/scores_seed$seed.txt"
done
$PY -m train.stages.ablation --stage3 "$RUN/stage3" --stage4 "$RUN/stage4" --out "$RUN/stage5" \
  --seeds 1 2 3 --steps 600 --test-clips "$CLIPS"
$PY -m train.report
if [ "$INSTALL" = 1 ]; then
  # float16 storage halves the download (from_pretrained loads it as float32)
  rm -rf reviosa/builtin.new && $PY -m train export "$RUN/stage4" --out reviosa/builtin.new --dtype float16
  cp -r "$MODEL/eval" reviosa/builtin.new/eval
  rm -rf reviosa/builtin && mv reviosa/builtin.new reviosa/builtin
  echo "built-in model installed in reviosa/builtin"
fi
