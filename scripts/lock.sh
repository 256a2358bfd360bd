#!/usr/bin/env bash
# Write constraints.txt, the lock, from the virtual environment VENV (default .venv-ci, the one .ci/run made): every
# installed distribution at its exact version, survgen itself and pip left out. Run it only on an environment whose
# `.ci/run` (or scripts/check_latest.sh) passed: the lock's promise is that these versions did.
#   bash scripts/lock.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-ci}
{
  echo "# The exact versions the test suite passed with (scripts/lock.sh from $venv, $(date -u +%Y-%m-%d))."
  echo "# Installed through by .ci/run and scripts/venv.sh; README \"Tested versions\" says how to move it forward."
  # torch's local label (+cpu) is left out: the same pin then takes the CUDA build where that is what is installed.
  "$venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -e '^pip==' -e '^survgen' \
    | sed -E 's/^(torch==[^+]*)\+.*/\1/' | sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
