#!/usr/bin/env bash
# A complete job with no downloads: train RRNet on the relworld model (shipped in the package)
# to rectify a relation direction pretraining never showed ("a cyan square is above a red
# circle" and its object swap), then render that same pair at new seeds at λ = 0 (the base
# model), 0.6 and 1 as RRNet's paper evaluates it, read every image with relworld's detector
# (relation by the objects' colours, objects by colour and shape), and print the counts the
# picture shows, then one line on other colour pairs, which RRNet was not trained on.
#   bash scripts/demo.sh                                       # RRNet, "a square above a circle"
#   bash scripts/demo.sh method.relation=left_of               # the other biased pair
# Any other overrides are passed to python -m relgen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_dir="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
for arg in "$@"; do  # a run folder given on the command line is the one trained and scored
  case "$arg" in hydra.run.dir=*) run_dir="${arg#hydra.run.dir=}" ;; esac
done
.venv/bin/python -m relgen method=rrnet backbone=relworld dataset=relworld_rrnet \
  hydra.run.dir="$run_dir" "$@"
# writes <run_dir>/demo/before_after.png and demo.json
.venv/bin/python -m relgen.relworld.demo "$run_dir"
