#!/usr/bin/env bash
# The whole pipeline on the bundled procedural dataset, and how the shipped default
# model (survgen/assets/default) was made: synthesise the data, train the tiny preset's
# VAE, stage 1, stage 2 for the rare classes G1, G6 and G7 together, and the rejection
# classifier; then export them into the package. Everything lands in ./quickstart/
# (OUT= moves it); look at */samples/, */loss.png and classifier/validation.jsonl.
# Re-running continues (or re-exports) whatever is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh

OUT=${OUT:-quickstart}
resume() { if [ -f "$1/run.json" ]; then echo --resume; fi; }

[ -d "$OUT/data" ] || survgen data synth --out "$OUT/data"
survgen data stats "$OUT/data" --plot "$OUT/class_balance.png"
survgen train-vae --data "$OUT/data" --out "$OUT/vae" $(resume "$OUT/vae") \
  --steps "${VAE_STEPS:-800}" --batch-size 16 --lr 1e-3 --sample-every 200
survgen train-spatial --data "$OUT/data" --vae "$OUT/vae" --out "$OUT/spatial" $(resume "$OUT/spatial") \
  --steps "${SPATIAL_STEPS:-1200}" --batch-size 16 --lr 1e-3 --ema-decay 0.999 --sample-every 400
survgen train-temporal --data "$OUT/data" --spatial "$OUT/spatial" --class G1 --class G6 --class G7 \
  --out "$OUT/temporal-rare" $(resume "$OUT/temporal-rare") \
  --steps "${TEMPORAL_STEPS:-800}" --batch-size 4 --lr 1e-3 --ema-decay 0.999 --sample-every 500 --checkpoint-every 100
survgen train-classifier --data "$OUT/data" --out "$OUT/classifier" $(resume "$OUT/classifier") \
  --steps "${CLASSIFIER_STEPS:-1000}" --batch-size 16 --val-every 250 --checkpoint-every 250
if [ -z "${NO_EXPORT:-}" ]; then
  python -c 'import sys; from survgen.generation.default import export_default; print(export_default(*sys.argv[1:]))' \
    "$OUT/temporal-rare" "$OUT/classifier"
fi
