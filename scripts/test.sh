#!/usr/bin/env bash
# Run the test suite (sets up .venv first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${RELGEN_SAMPLES_DIR:-}" ] && [ -d ../shared/samples ]; then
  export RELGEN_SAMPLES_DIR="$(cd ../shared/samples && pwd)"
fi
exec .venv/bin/python -m pytest -q "$@"
