# Sourced by the scripts here: activate ./.venv, creating it and installing survgen through constraints.txt
# first if it is missing or was installed through another lock.
if ! cmp -s constraints.txt .venv/survgen-constraints.txt || [ ! -x .venv/bin/survgen ]; then
  bash scripts/install.sh .venv
fi
. .venv/bin/activate
