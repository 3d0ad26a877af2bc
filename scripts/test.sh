#!/usr/bin/env bash
# Installs what the tests need into .venv and runs the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
python -m pip install -q -e ".[test]"
python -m ruff check skate tests benchmarks
python -m pytest -m "not soak" "$@"
