#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: install, synthesise the
# bundled dataset, train the tiny preset's VAE, stage 1 and stage 2 (rare class G7).
# Everything lands in ./quickstart/; look at quickstart/*/samples/ and */loss.png.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/survgen ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q torch==2.13.0
  pip install -q setuptools wheel pybind11
  pip install -q --no-build-isolation -e ".[dev]"
else
  . .venv/bin/activate
fi

OUT=${OUT:-quickstart}
# A second run of this script continues (or just re-exports) each finished or killed stage.
resume() { if [ -f "$1/run.json" ]; then echo --resume; fi; }

survgen info
[ -d "$OUT/data" ] || survgen data synth --out "$OUT/data"
survgen data stats "$OUT/data" --plot "$OUT/class_balance.png"
survgen train-vae --data "$OUT/data" --out "$OUT/vae" $(resume "$OUT/vae") \
  --steps "${VAE_STEPS:-400}" --batch-size 16 --lr 1e-3 --sample-every 100
survgen train-spatial --data "$OUT/data" --vae "$OUT/vae" --out "$OUT/spatial" $(resume "$OUT/spatial") \
  --steps "${SPATIAL_STEPS:-600}" --batch-size 16 --lr 1e-3 --ema-decay 0.999 --sample-every 150
survgen train-temporal --data "$OUT/data" --spatial "$OUT/spatial" --class G7 --out "$OUT/temporal-G7" \
  $(resume "$OUT/temporal-G7") --steps "${TEMPORAL_STEPS:-300}" --batch-size 4 --lr 1e-3 --ema-decay 0.999 \
  --sample-every 100
echo "samples: $OUT/spatial/samples/ and $OUT/temporal-G7/samples/" >&2
