#!/usr/bin/env bash
# `make run`: fetch a free geo database when none is configured, then run the service
# with Redis under data/ and a demo link.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TRACKER_GEO_DATABASES:-}" ] && ! grep -qE '^databases = \[ *"' config/tracker.toml; then
  if db=$(.venv/bin/python -m geo.fetch data/geo 2>/dev/null); then
    export TRACKER_GEO_DATABASES="$db"
  else
    echo "run: could not fetch the free geo database (needs npm); geo is off" >&2
  fi
fi
exec .venv/bin/tracker serve --redis --demo
