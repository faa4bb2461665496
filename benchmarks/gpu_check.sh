#!/usr/bin/env bash
# The first run on a CUDA machine, in one command: the gpu tests, then the full-size step
# benchmark of each method on its paper's backbone with every precision setting, into
# benchmarks/results/gpu_check_<card>.json (under 8 minutes on one H100). Commit that file.
#
#   bash benchmarks/gpu_check.sh           # on the accelerator
#   bash benchmarks/gpu_check.sh --dry     # the same plan on the CPU with tiny backbones
#
# Further options go to benchmarks/gpu_check.py (--budget, --cap, --pairs, --methods, --settings).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
