#!/usr/bin/env bash
# A complete job with no downloads: train RRNet on the relworld model (shipped in the package)
# to rectify a relation direction pretraining never showed, export it, and render the
# before/after grid (columns: lambda = 0, the base model, then the rectified strengths).
#   bash scripts/demo.sh                                       # RRNet, "a square above a circle"
#   bash scripts/demo.sh method.relation=left_of               # the other biased pair
# Any other overrides are passed to python -m relgen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_dir="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/python -m relgen method=rrnet backbone=relworld dataset=relworld_rrnet \
  hydra.run.dir="$run_dir" "$@"
# prints the grid's path: <run_dir>/generate/NNNN/rrnet-relworld-lambda.png
grid=$(.venv/bin/python -m relgen.generate run_dir="$run_dir" "method_options.scales=[0,0.3,0.6,1]" num_images=4)
echo "demo finished: the before/after grid is $grid"
