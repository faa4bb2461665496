#!/usr/bin/env bash
# Create .venv (once) and install relgen with its pinned dependencies (editable).
# Says what it installs and shows pip's output as it goes (the first install downloads about
# 1 GB); everything also goes to .venv/install.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "relgen setup: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
stamp=.venv/.relgen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=.venv/install.log
  : >"$log"
  install() {  # pip's lines on the terminal and in the log
    .venv/bin/python -m pip install --progress-bar on "$@" 2>&1 | tee -a "$log"
  }
  # torch first, alone: the pinned CPU build is what the other packages must see.
  echo "relgen setup: [1/2] installing torch 2.13.0 (log: $log)"
  if install "torch==2.13.0" && {
       echo "relgen setup: [2/2] installing relgen and its pinned dependencies (diffusers, transformers," \
            "accelerate, peft, hydra, dgl, tensorboard, pytest)"
       install -e ".[test]"; } \
     && .venv/bin/python -c "import relgen, torch, diffusers, hydra" 2>>"$log"; then
    touch "$stamp"
    echo "relgen setup: done"
  else
    echo "relgen: error: installing dependencies failed (full log: $log)" >&2
    exit 1
  fi
fi
