#!/usr/bin/env bash
# The paper's experiment on the bundled procedural dataset with the shipped tiny model:
# generate videos of the rare classes G1, G6 and G7 (keeping the rejected ones, for the
# arms without rejection sampling), measure their quality, then train a recogniser (see below) on
# real / real + synthetic under each rejection rule (top-3, top-1, p>=0.5) / without it,
# over 5 seeds, and score it on test recordings that neither the generator nor any arm
# trained on, with paired 95 % intervals per rare class.
#
# The shipped model was trained on `survgen data synth` with its defaults (seed 0), so
# that is the real training set here; the test set is 20 new recordings (seed 1).
# Everything lands in ./evaluation/ (OUT= moves it); re-running continues where it stopped. The reports,
# their pictures and the time each step took are then copied into docs/evaluation/ (DOCS=).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh

OUT=${OUT:-evaluation}
DOCS=${DOCS:-docs/evaluation}  # where the reports are copied for the README; DOCS= (empty) skips the copy
SEEDS=${SEEDS:-0 1 2 3 4}      # the downstream trainings' seeds: more seeds, narrower paired intervals
seeds=()
for s in $SEEDS; do seeds+=(--seed "$s"); done
. scripts/timings.sh

[ -d "$OUT/data" ] || timed "synthesise the real data" survgen data synth --out "$OUT/data"
[ -d "$OUT/test" ] || timed "synthesise the test data" survgen data synth --out "$OUT/test" --seed 1 --num-videos 20
timed "generate (top-3 rejection, rejected kept)" \
  survgen generate --class G1 --class G6 --class G7 --n "${N:-64}" --reject-topk 3 --keep-rejected \
  --out "$OUT/generated/rare" --quiet
[ -f "$OUT/quality/quality.json" ] || timed "evaluate quality (with the real-vs-real floor)" \
  survgen evaluate quality --real "$OUT/data" --fake "$OUT/generated/rare" --report "$OUT/quality" \
  --per-recording "${PER_RECORDING:-100}" --quiet
# The recogniser: the ResNet-LSTM (a 2D ResNet per frame, then an LSTM), not the 3D ResNet that judged the
# candidates. X3D, the default of `evaluate downstream` and the paper's, needs its 160 px: at 32 px it stays at
# chance within this CPU budget (benchmarks/NOTES.md). 7 arms × 5 seeds of 300 steps, every frame decoded once.
timed "evaluate downstream" \
  survgen evaluate downstream --real "$OUT/data" --test "$OUT/test" --synthetic "$OUT/generated/rare" \
  --preset resnet-lstm --image-size 32 --steps "${STEPS:-300}" --batch-size 16 "${seeds[@]}" \
  --report "$OUT/downstream" --quiet
cat "$OUT/timings.md"

if [ -n "$DOCS" ]; then  # the reports and their pictures, not the runs
  for part in quality downstream; do
    mkdir -p "$DOCS/$part"
    find "$OUT/$part" -maxdepth 1 -type f \( -name '*.md' -o -name '*.json' -o -name '*.png' -o -name '*.gif' \) \
      -exec cp {} "$DOCS/$part/" \;
  done
  cp "$OUT/generated/rare/manifest.json" "$DOCS/generation_manifest.json"
  cp "$OUT/timings.md" "$DOCS/timings.md"
  echo "reports copied to $DOCS"
fi
