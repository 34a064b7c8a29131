#!/usr/bin/env bash
# Run padnet's benchmark suite (not part of the tests): per-layer and ResNet-18 speed and peak memory as ratios
# to the static model in the same run, and deployed ResNet-50 file sizes. Writes OUT/bench.md and OUT/bench.json.
# Usage: benchmarks/run.sh [OUT] [padnet bench flags...]   (default OUT: runs/bench; about 8 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench}
shift || true
exec .venv/bin/padnet bench --out "$OUT" "$@"
