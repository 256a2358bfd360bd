# Sourced by the scripts here: activate ./.venv, creating it and installing survgen first if needed.
# torch is pinned before anything else: an unpinned torch would pull the CUDA build.
if [ ! -x .venv/bin/survgen ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q torch==2.13.0
  pip install -q setuptools wheel pybind11 ninja
  pip install -q --no-build-isolation -e ".[dev]"
else
  . .venv/bin/activate
fi
