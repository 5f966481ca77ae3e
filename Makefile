# Two commands: `make run` runs the service, `make test` runs the tests.
# Both install what is missing first (redis-server, the Python environment in .venv/).

.PHONY: run test setup lint

setup:
	@scripts/setup.sh

run: setup
	scripts/run.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q

lint: setup
	.venv/bin/ruff check .
