#!/usr/bin/env bash
# The paper's experiment on the bundled procedural dataset with the shipped tiny model:
# generate videos of the rare classes G1, G6 and G7 (keeping the rejected ones, for the
# arms without rejection sampling), measure their quality, then train a recogniser (X3D) on
# real / real + synthetic under each rejection rule (top-3, top-1, p>=0.5) / without it,
# over 5 seeds, and score it on test recordings that neither the generator nor any arm
# trained on, with paired 95 % intervals per rare class.
#
# The shipped model was trained on `survgen data synth` with its defaults (seed 0), so
# that is the real training set here; the test set is 20 new recordings (seed 1).
# Everything lands in ./evaluation/ (OUT= moves it); re-running continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh

OUT=${OUT:-evaluation}
[ -d "$OUT/data" ] || survgen data synth --out "$OUT/data"
[ -d "$OUT/test" ] || survgen data synth --out "$OUT/test" --seed 1 --num-videos 20
survgen generate --class G1 --class G6 --class G7 --n "${N:-64}" --reject-topk 3 --keep-rejected \
  --out "$OUT/generated/rare" --quiet
[ -f "$OUT/quality/quality.json" ] || \
  survgen evaluate quality --real "$OUT/data" --fake "$OUT/generated/rare" --report "$OUT/quality"
survgen evaluate downstream --real "$OUT/data" --test "$OUT/test" --synthetic "$OUT/generated/rare" \
  --image-size 32 --steps "${STEPS:-300}" --batch-size 16 --report "$OUT/downstream"
