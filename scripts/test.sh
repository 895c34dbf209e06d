#!/usr/bin/env bash
# The whole test suite on a fresh machine: the virtual environments, the
# services, pytest against them; stops what it started. Arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh mongoeco-venv
scripts/services.sh chromium

started=$(scripts/services.sh rabbitmq)
if [[ $started == started ]]; then
  trap 'scripts/services.sh rabbitmq-stop' EXIT
fi

# pytest starts the MongoDB-protocol server itself (tests/conftest.py) so that
# fault tests can stop and restart it; it stops it when the run ends.
export TASKPOINT_MONGOECO_PYTHON="$PWD/.services/mongoeco-venv/bin/python"
export TASKPOINT_TEST_AMQP_URL="${TASKPOINT_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
.venv/bin/python -m pytest "$@"
