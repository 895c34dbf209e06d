# The everyday commands; CI runs `make lint` and `make test` (see .ci/run).
# `make run` sets up .venv and starts taskpoint on the embedded defaults: the
# in-process broker and SQLite under ./taskpoint-data of this folder.
.PHONY: setup run test lint format bench clean

setup:
	scripts/setup.sh

run: setup
	.venv/bin/taskpoint run

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
