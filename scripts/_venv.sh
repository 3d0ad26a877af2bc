# Sourced by the scripts: creates (once) and activates the project's .venv.
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian's python3 ships venv separately.
    (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
fi
# shellcheck disable=SC1091
source .venv/bin/activate
