# Two commands: `make run` runs the service, `make test` runs the tests.
# Both install what is missing first (redis-server, the Python environment in .venv/).

.PHONY: run test test-serial setup lint bench chaos

setup:
	@scripts/setup.sh

run: setup
	scripts/run.sh

# In a random order (pytest-randomly; the last line names the seed to replay it), on two
# workers, a test file per worker at a time (its module-scoped services start once).
test: lint
	TRACKER_REQUIRE_EXTENSIONS=1 .venv/bin/pytest -q -n 2 --dist loadfile

# One process, in file order: the plainest run, to tell an ordering fault from a race.
test-serial: lint
	TRACKER_REQUIRE_EXTENSIONS=1 .venv/bin/pytest -q -p no:randomly

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Throughput against nginx empty_gif and the bare 302 server (one edge against one worker,
# then two against two, with the sustained rate), then the sink alone, then postbacks
# (installs nginx-light and wrk when missing).
bench: setup
	@command -v wrk >/dev/null && test -x /usr/sbin/nginx || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null)
	.venv/bin/python -m loadtest.bench --processes 1 --threads 1 --bare --ratio-only
	.venv/bin/python -m loadtest.bench --bare
	.venv/bin/python -m loadtest.sink_bench
	.venv/bin/python -m loadtest.postback_bench

# The fault suite on loopback (Redis, sink, edge and service kills, spool disk full and
# read-only, ClickHouse down with TRACKER_CHAOS_CLICKHOUSE_URL); prints one table.
chaos: setup
	.venv/bin/python -m loadtest.chaos
