#!/usr/bin/env bash
# Does the suite pass with the newest versions pyproject.toml's ranges allow? Installs them (no lock) into a scratch
# environment over a clone of HEAD, runs the README's test command there, and writes which versions it ran with and
# whether they passed to benchmarks/results/latest_versions.md. Not part of CI: the answer changes with the day.
#   bash scripts/check_latest.sh                 # report only
#   bash scripts/check_latest.sh --update-lock   # and, if the suite passed, move constraints.txt to those versions
set -uo pipefail
cd "$(dirname "$0")/.."
here=$PWD
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git clone -q "$here" "$scratch/survgen"
cd "$scratch/survgen"
bash scripts/install.sh "$scratch/venv" --latest || { echo "check_latest: the install failed" >&2; exit 1; }
start=$(date +%s)
"$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider --benchmark-disable tests benchmarks 2>&1 | tee "$scratch/pytest.log"
status=${PIPESTATUS[0]}
minutes=$(( ($(date +%s) - start + 30) / 60 ))
bash scripts/lock.sh "$scratch/venv" >/dev/null  # the newest versions, in the lock's format, in the scratch clone

report=$here/benchmarks/results/latest_versions.md
verdict=$([ "$status" -eq 0 ] && echo "passed" || echo "FAILED (pytest exit $status)")
{
  echo "# The suite on the newest versions the ranges allow"
  echo
  echo "\`bash scripts/check_latest.sh\` on $(date -u +%Y-%m-%d), at $(git -C "$here" rev-parse --short HEAD), Python $("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())'), $(nproc) cores: **$verdict** in $minutes min."
  echo
  echo "pytest's last line: \`$(tail -n 1 "$scratch/pytest.log")\`"
  echo
  echo "Versions that differ from constraints.txt (lock → newest allowed):"
  echo
  diff <(grep -v '^#' "$here/constraints.txt") <(grep -v '^#' constraints.txt) | sed -n 's/^> /- /p' \
    | while read -r _ pin; do
        name=${pin%%==*}; old=$(grep -i "^$name==" "$here/constraints.txt" | cut -d= -f3)
        echo "- $name: ${old:-(not in the lock)} → ${pin#*==}"
      done
  echo
  echo "Every version installed:"
  echo
  echo '```'
  grep -v '^#' constraints.txt
  echo '```'
} > "$report"
echo "check_latest: $verdict; wrote ${report#"$here/"}"
if [ "$status" -eq 0 ] && [ "${1:-}" = "--update-lock" ]; then
  bash "$here/scripts/lock.sh" "$scratch/venv" && echo "check_latest: constraints.txt moved to these versions"
fi
exit "$status"
