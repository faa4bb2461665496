#!/usr/bin/env bash
# A complete job with no downloads: train a method on a tiny backbone and a synthetic dataset,
# export it, render a sample grid, then generate with the exported artifact.
#   bash scripts/demo.sh                 # ReVersion, 30 steps
#   bash scripts/demo.sh method=rrnet    # any other overrides are passed to python -m relgen
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_dir="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/python -m relgen method=reversion trainer.max_steps=30 trainer.checkpoint_every=10 \
  hydra.run.dir="$run_dir" "$@"
.venv/bin/python -m relgen.generate run_dir="$run_dir" prompt="red circle <R> blue square" num_images=2
echo "demo finished: everything is under $run_dir"
