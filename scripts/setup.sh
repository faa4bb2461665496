#!/usr/bin/env bash
# Create .venv (once) and install relgen with its pinned dependencies (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.relgen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=.venv/install.log
  # torch first, alone: the pinned CPU build is what the other packages must see.
  if ! .venv/bin/python -m pip install "torch==2.13.0" >"$log" 2>&1 \
     || ! .venv/bin/python -m pip install -e ".[test]" >>"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 20 >&2
    echo "relgen: error: installing dependencies failed (full log: $log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import relgen, torch, diffusers, hydra"
  touch "$stamp"
fi
