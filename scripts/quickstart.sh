#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: install, then generate 8
# videos of the rare class G7 ("returning/dropping the needle") with the shipped tiny
# model, keeping only those the shipped classifier puts G7 in its top 3.
# Output: generated/G7/ (videos/*.mkv + *.gif, preview.mp4, contact_sheet.png, manifest.json, labels.csv).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh

survgen info
# Re-running continues (or, when complete, just re-reports) the same folder.
survgen generate --class G7 --n 8 --reject-topk 3 --gif --out "${OUT:-generated/G7}"
