# The everyday commands; CI runs `make lint` and `make test` (see .ci/run).
.PHONY: setup test lint format bench clean

setup:
	scripts/setup.sh

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: setup
	scripts/services.sh mongoeco-venv
	scripts/services.sh rabbitmq
	TASKPOINT_MONGOECO_PYTHON=$(CURDIR)/.services/mongoeco-venv/bin/python \
		.venv/bin/python -m bench.store
	.venv/bin/python -m bench.actors

clean:
	rm -rf .venv .services .pytest_cache .mypy_cache .ruff_cache
