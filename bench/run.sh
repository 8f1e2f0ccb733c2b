#!/usr/bin/env bash
# The benchmark of issue 5 in one command: bench/run.sh [--quick] [run.py options...]
# (see bench/run.py --help and bench/METHOD.md). Needs what tools/setup.sh installs (Envoy with
# V8, wasm-opt, wrk, h2load, the wasm32-wasip1 target); installs matplotlib for the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib \
  || echo "bench: matplotlib could not be installed: no chart" >&2
exec python3 bench/run.py "$@"
