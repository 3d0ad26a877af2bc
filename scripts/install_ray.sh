#!/usr/bin/env bash
# Creates .ray-venv/ with real Ray, for side-by-side microbenchmarks:
#   bash scripts/install_ray.sh
#   python -m benchmarks --compare ray
# Usage: bash scripts/install_ray.sh [RAY_VERSION]   (default: latest)
set -euo pipefail
cd "$(dirname "$0")/.."
spec="ray"
if [ "${1:-}" != "" ]; then
  spec="ray==$1"
fi
if [ ! -x .ray-venv/bin/python ]; then
  if ! python3 -m venv .ray-venv 2>/dev/null; then
    rm -rf .ray-venv
    # Debian's python3 ships venv separately.
    (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null
    python3 -m venv .ray-venv
  fi
  .ray-venv/bin/python -m pip install -q --upgrade pip
fi
.ray-venv/bin/python -m pip install -q "$spec" numpy psutil
.ray-venv/bin/python -c "import ray; print('ray', ray.__version__, 'installed in .ray-venv')"
