#!/usr/bin/env bash
# Installs what the service needs and is missing: redis-server, postgresql (the
# ledger's tests), chromium for the browser tests (Debian packages; the tests drive
# Debian's chromium, never a downloaded one) and the
# Python environment in .venv/ (the project and its dev tools). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# openssl makes the self-signed certificate of the TLS Redis tests (tracker.testing)
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing openssl (TLS tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium (browser tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# PostgreSQL: the ledger's tests run against a real server (the service itself needs one
# only when TRACKER_LEDGER_DSN names it; SQLite is the default).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing postgresql"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# gcc and the Python headers: the install compiles the Cython accelerators
# (tracker/edge/_clickpath.pyx, tracker/_ids.pyx, tracker/_hot.pyx,
# tracker/sink/enrich/_fraud_counts.pyx, tracker/sink/enrich/_rows.pyx,
# tracker/sink/enrich/_fraud_memory.pyx).
if ! command -v gcc >/dev/null 2>&1; then
  echo "setup: installing gcc"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  echo "setup: installing the Python headers"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# (again when an accelerator's source changed, or it is not built: `pip install -e .`
# compiles them in place)
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] \
  || [ tracker/edge/_clickpath.pyx -nt .venv/.installed ] || [ tracker/_ids.pyx -nt .venv/.installed ] \
  || [ tracker/_hot.pyx -nt .venv/.installed ] \
  || [ tracker/sink/enrich/_fraud_counts.pyx -nt .venv/.installed ] \
  || [ tracker/sink/enrich/_rows.pyx -nt .venv/.installed ] \
  || [ tracker/sink/enrich/_fraud_memory.pyx -nt .venv/.installed ] \
  || [ setup.py -nt .venv/.installed ] || ! ls tracker/edge/_clickpath.*.so >/dev/null 2>&1 \
  || ! ls tracker/_ids.*.so >/dev/null 2>&1 || ! ls tracker/_hot.*.so >/dev/null 2>&1 \
  || ! ls tracker/sink/enrich/_fraud_counts.*.so >/dev/null 2>&1 \
  || ! ls tracker/sink/enrich/_rows.*.so >/dev/null 2>&1 \
  || ! ls tracker/sink/enrich/_fraud_memory.*.so >/dev/null 2>&1; then
  echo "setup: installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tracker, aiohttp, redis, clickhouse_connect, chdb, sqlalchemy, alembic, psycopg"
  # the accelerators were built
  .venv/bin/python -c "import tracker.edge._clickpath, tracker._ids, tracker._hot, tracker.sink.enrich._fraud_counts, tracker.sink.enrich._rows, tracker.sink.enrich._fraud_memory"
  touch .venv/.installed
fi
