#!/usr/bin/env bash
# Installs skate into .venv and runs Monte Carlo pi on every local core.
# Usage: bash scripts/pi.sh [--samples N] [--tasks N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
python -m pip install -q -e ".[numpy]"
python -m skate.examples.pi "$@"
