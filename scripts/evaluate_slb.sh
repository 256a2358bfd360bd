#!/usr/bin/env bash
# The paper's task 2 (Table 3) on the bundled staple line bleeding (SLB) data, from scratch:
# synthesise the real training set (48 stapler transections, 10 with bleeding) and a test set
# of 30 new ones (seed 1); train the tiny VAE, stage 1 on every frame with its class prompt,
# stage 2 for the bleeding class (SLB1) and the rejection judge (the tiny 3D ResNet); generate
# N accepted bleeding videos under top-1 rejection, keeping the rejected ones (for the arm
# without rejection sampling); measure their quality (the paper's Table 1 is on this task);
# then train the paper's recogniser, a ResNet-LSTM, on real / real + synthetic with top-1 RS /
# real + as many synthetic videos without RS / real + as many real held-out bleeding clips, from
# 30 more transections (seed 2, REFERENCE_SHARE of them bleeding: the positive control) / those
# clips encoded as generated (the codec control), over 5 seeds, and report balanced accuracy and
# the bleeding class's F1 with paired 95 % intervals. The generator is judged only if the
# positive control's gain is outside the noise. (One rare class: no labels to rotate, so no
# negative control.)
#
# Everything lands in ./evaluation-slb/ (OUT= moves it); re-running continues where it stopped
# (trainings resume, generation and the downstream test continue their folders). The reports,
# their pictures and the time each step took are then copied into docs/evaluation/slb/ (DOCS=;
# empty skips the copy). Sizes can be turned down for a smoke test, e.g.
#   OUT=/tmp/slb-smoke DOCS= NUM_VIDEOS=6 TEST_VIDEOS=4 VAE_STEPS=2 SPATIAL_STEPS=2 TEMPORAL_STEPS=2 \
#   CLASSIFIER_STEPS=2 N=2 SAMPLE_STEPS=2 STEPS=2 SEEDS="0 1" bash scripts/evaluate_slb.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh

OUT=${OUT:-evaluation-slb}
DOCS=${DOCS-docs/evaluation/slb}
SEEDS=${SEEDS:-0 1 2 3 4}
. scripts/timings.sh
resume() { if [ -f "$1/run.json" ]; then echo --resume; fi; }
seeds=()
for s in $SEEDS; do seeds+=(--seed "$s"); done

[ -d "$OUT/data" ] || timed "synthesise the real data" \
  survgen data synth --task slb --out "$OUT/data" --num-videos "${NUM_VIDEOS:-48}"
[ -d "$OUT/test" ] || timed "synthesise the test data" \
  survgen data synth --task slb --out "$OUT/test" --seed 1 --num-videos "${TEST_VIDEOS:-30}"
[ -d "$OUT/reference" ] || timed "synthesise the positive control's transections" \
  survgen data synth --task slb --out "$OUT/reference" --seed 2 --num-videos "${REFERENCE_VIDEOS:-30}" \
  --rare-share "${REFERENCE_SHARE:-0.5}"
survgen data stats "$OUT/data" --plot "$OUT/class_balance.png"
timed "train the VAE" \
  survgen train-vae --data "$OUT/data" --out "$OUT/vae" $(resume "$OUT/vae") \
  --steps "${VAE_STEPS:-400}" --batch-size 16 --lr 1e-3 --sample-every 100 --quiet
timed "train stage 1 (spatial)" \
  survgen train-spatial --data "$OUT/data" --vae "$OUT/vae" --out "$OUT/spatial" $(resume "$OUT/spatial") \
  --steps "${SPATIAL_STEPS:-600}" --batch-size 16 --lr 1e-3 --ema-decay 0.999 --sample-every 150 --quiet
timed "train stage 2 (temporal, SLB1)" \
  survgen train-temporal --data "$OUT/data" --spatial "$OUT/spatial" --class SLB1 \
  --out "$OUT/temporal-SLB1" $(resume "$OUT/temporal-SLB1") \
  --steps "${TEMPORAL_STEPS:-400}" --batch-size 4 --lr 1e-3 --ema-decay 0.999 --sample-every 200 \
  --checkpoint-every 100 --quiet
timed "train the rejection classifier (tiny 3D ResNet)" \
  survgen train-classifier --data "$OUT/data" --out "$OUT/classifier" $(resume "$OUT/classifier") \
  --preset tiny --steps "${CLASSIFIER_STEPS:-600}" --batch-size 16 --val-every 200 --checkpoint-every 200 --quiet
timed "generate (top-1 rejection, rejected kept)" \
  survgen generate --model "$OUT/temporal-SLB1" --classifier "$OUT/classifier" --class SLB1 --n "${N:-128}" \
  --reject-topk 1 --keep-rejected ${SAMPLE_STEPS:+--steps "$SAMPLE_STEPS"} --out "$OUT/generated/SLB1" --quiet
[ -f "$OUT/quality/quality.json" ] || timed "evaluate quality (with the real-vs-real floor)" \
  survgen evaluate quality --real "$OUT/data" --fake "$OUT/generated/SLB1" --classifier "$OUT/classifier" \
  --report "$OUT/quality" --quiet
timed "evaluate downstream (ResNet-LSTM)" \
  survgen evaluate downstream --real "$OUT/data" --test "$OUT/test" --reference-real "$OUT/reference" \
  --synthetic "$OUT/generated/SLB1" \
  --preset resnet-lstm --rejection top-1 "${seeds[@]}" --image-size "${IMAGE_SIZE:-32}" \
  --steps "${STEPS:-300}" --batch-size 16 --report "$OUT/downstream" --quiet
cat "$OUT/timings.md"

if [ -n "$DOCS" ]; then  # the reports and their pictures, not the runs
  for part in quality downstream; do
    mkdir -p "$DOCS/$part"
    find "$OUT/$part" -maxdepth 1 -type f \( -name '*.md' -o -name '*.json' -o -name '*.png' -o -name '*.gif' \) \
      -exec cp {} "$DOCS/$part/" \;
  done
  cp "$OUT/generated/SLB1/manifest.json" "$DOCS/generation_manifest.json"
  cp "$OUT/timings.md" "$DOCS/timings.md"
  echo "reports copied to $DOCS"
fi
