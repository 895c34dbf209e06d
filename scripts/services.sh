#!/usr/bin/env bash
# Bring up what the tests need on this machine, loudly, or fail.
#
#   scripts/services.sh rabbitmq        start RabbitMQ (and its management
#                                       console) unless running; prints
#                                       "started" when this call started it
#   scripts/services.sh rabbitmq-stop   stop RabbitMQ
#   scripts/services.sh mongoeco-venv   make .services/mongoeco-venv: Python
#                                       3.13 with the MongoDB-protocol server
#   scripts/services.sh chromium        install Debian's chromium unless
#                                       /usr/bin/chromium exists (browser tests)
set -euo pipefail

cd "$(dirname "$0")/.."
SERVICES=.services
MONGOECO_VERSION=4.11.0

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

rabbitmq() {
  local started=""
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null; then
      say "installing rabbitmq-server from Debian's packages"
      apt-get update -qq >/dev/null && apt-get install -y -qq rabbitmq-server >/dev/null \
        || die "could not install rabbitmq-server"
    fi
    say "starting RabbitMQ"
    rabbitmq-server -detached
    # await_startup fails at once until the node has registered: retry it.
    wait_for 120 rabbitmqctl await_startup || die "RabbitMQ did not start in 120 s"
    started=yes
  fi
  if ! port_open 15672; then
    say "enabling the management console"
    rabbitmq-plugins enable rabbitmq_management >/dev/null \
      || die "could not enable rabbitmq_management"
    wait_for 60 port_open 15672 || die "management console did not open on 15672"
  fi
  wait_for 60 port_open 5672 || die "RabbitMQ is not listening on 5672"
  [[ -n $started ]] && echo started
  return 0
}

rabbitmq_stop() {
  say "stopping RabbitMQ"
  rabbitmqctl shutdown >/dev/null 2>&1 || rabbitmqctl stop >/dev/null 2>&1 || true
}

find_python313() {
  local candidate
  # pyenv's shims exist for versions that are not active, so each candidate
  # must prove it runs and is 3.13.
  for candidate in "${TASKPOINT_PYTHON313:-}" "$HOME"/.pyenv/versions/3.13*/bin/python \
      "$(command -v python3.13 || true)" /usr/local/bin/python3.13 /usr/bin/python3.13; do
    [[ -n $candidate && -x $candidate ]] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

mongoeco_venv() {
  local venv=$SERVICES/mongoeco-venv
  [[ -f $venv/.installed-$MONGOECO_VERSION ]] && return 0
  local python
  python=$(find_python313) || die "no Python 3.13 found (pyenv install 3.13, or set TASKPOINT_PYTHON313)"
  say "creating $venv with $python (mongoeco $MONGOECO_VERSION)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "mongoeco[wire]==$MONGOECO_VERSION" \
    || die "could not install mongoeco"
  touch "$venv/.installed-$MONGOECO_VERSION"
}

chromium() {
  # Playwright drives Debian's build: no browser is downloaded.
  [[ -x /usr/bin/chromium ]] && return 0
  say "installing chromium from Debian's packages"
  apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || die "could not install chromium"
  [[ -x /usr/bin/chromium ]] || die "chromium installed but /usr/bin/chromium is missing"
}

case "${1:-}" in
  rabbitmq) rabbitmq ;;
  rabbitmq-stop) rabbitmq_stop ;;
  mongoeco-venv) mongoeco_venv ;;
  chromium) chromium ;;
  *) die "usage: $0 rabbitmq|rabbitmq-stop|mongoeco-venv|chromium" ;;
esac
