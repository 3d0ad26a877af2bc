#!/usr/bin/env bash
# Installs what the tests need into .venv and runs the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
# The control-store tests start their own redis-server (Debian's package).
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
  else
    echo "note: redis-server is not installed; the Redis control-store tests will be skipped" >&2
  fi
fi
# The dashboard's browser test drives Debian's Chromium with Playwright (the `test` extra);
# Playwright's own browser download is never used.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "note: /usr/bin/chromium is not installed; the dashboard's browser test will be skipped" >&2
  fi
fi
python -m pip install -q -e ".[test]"
python -m ruff check skate tests benchmarks
python -m pytest -m "not soak and not bigmem" "$@"
