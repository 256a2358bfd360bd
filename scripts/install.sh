#!/usr/bin/env bash
# Install survgen and everything it needs into the virtual environment VENV (created if missing), through
# constraints.txt: the exact versions .ci/run passed with. `--latest` leaves the lock out and takes the newest
# versions pyproject.toml's ranges allow (scripts/check_latest.sh). torch is pinned first: an unpinned torch
# would pull the CUDA build and GBs of packages.
#   bash scripts/install.sh VENV [--latest]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: scripts/install.sh VENV [--latest]}
lock=(-c constraints.txt)
if [ "${2:-}" = "--latest" ]; then lock=(); fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q "${lock[@]}")
"${pip[@]}" torch==2.13.0
"${pip[@]}" setuptools wheel pybind11 ninja
"${pip[@]}" --no-build-isolation -e ".[dev]"
# What this environment was installed through, so that scripts/venv.sh reinstalls when the lock moves.
if [ ${#lock[@]} -gt 0 ]; then cp constraints.txt "$venv/survgen-constraints.txt"; fi
