#!/usr/bin/env bash
# Issue 30's reproducer of the intermittent native crash in survgen._C's CPU kernel: runs the "trio"
# (tests/test_kernels.py, tests/test_kernels_cpu.py, tests/test_cli.py) N times, each in a fresh Python process,
# and counts the runs that failed by their exit status, death by a signal included. Whole runs, not single
# tests: the crash needed torch.library.opcheck earlier in the same process.
#
#   scripts/kernel_trio.sh [N]              # N runs (default 20), pytest started from the checkout's root
#   RUN_FROM=/tmp scripts/kernel_trio.sh 5  # pytest started from another directory
#   PYTHON=.venv/bin/python scripts/kernel_trio.sh
#
# Everything the runs write (logs, pytest's tmp_path) goes to one temporary directory, removed at the end;
# a failed run's last log lines are printed.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-20}
python=${PYTHON:-python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "${RUN_FROM:-$repo}" || exit 2

# "exit 1", or "SIGSEGV" for a process a signal killed (bash reports those as 128 + the signal number).
describe_status() {
  if (( $1 > 128 )); then echo "SIG$(kill -l $(($1 - 128)))"; else echo "exit $1"; fi
}

failures=0
for ((run = 1; run <= runs; run++)); do
  log="$scratch/run-$run.log"
  start=$SECONDS
  TMPDIR="$scratch" PYTHONDONTWRITEBYTECODE=1 "$python" -m pytest -q -p no:cacheprovider \
    "$repo/tests/test_kernels.py" "$repo/tests/test_kernels_cpu.py" "$repo/tests/test_cli.py" >"$log" 2>&1
  status=$?
  if ((status == 0)); then
    echo "run $run/$runs: ok ($((SECONDS - start)) s)"
  else
    failures=$((failures + 1))
    echo "run $run/$runs: FAILED, $(describe_status "$status") ($((SECONDS - start)) s); last lines of its log:"
    tail -n 15 "$log" | sed 's/^/    /'
  fi
done
echo "kernel trio: $failures failures in $runs runs"
((failures == 0))
