"""The compose file is valid Compose and sets only what taskpoint reads.

There is no Docker engine on these machines, so the file is checked by
validating it against the Compose Specification's JSON Schema and by checking
what it sets against the code: every command is a real ``taskpoint``
subcommand, every ``TASKPOINT_*`` variable a Settings field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli import build_parser
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SPEC = Path(__file__).resolve().parents[3] / "shared" / "data" / "compose-spec.json"
PREFIX = Settings.model_config.get("env_prefix", "")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def taskpoint_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build") is not None
        or str(service.get("image", "")).startswith("taskpoint")
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_the_compose_file_follows_the_compose_specification(compose):
    assert SPEC.exists(), f"the Compose Specification schema is missing at {SPEC}"
    schema = json.loads(SPEC.read_text())
    # The file says draft-07 in a spelling jsonschema does not look up.
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)
    ]
    assert not errors, errors


def test_every_command_is_a_taskpoint_subcommand(compose):
    services = taskpoint_services(compose)
    assert {"gateway", "worker"} <= set(services)
    parser = build_parser()
    for name, service in services.items():
        command = service["command"]
        argv = command.split() if isinstance(command, str) else list(command)
        args = parser.parse_args(argv)
        assert args.command == argv[0], name
    assert services["gateway"]["command"] == ["gateway"]
    assert services["worker"]["command"] == ["worker"]


def test_every_taskpoint_variable_is_a_settings_field(compose):
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    seen = set()
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if key.startswith("TASKPOINT_"):
                assert key in fields, f"{name} sets {key}, which Settings does not read"
                seen.add(key)
                Settings(**{key.removeprefix(PREFIX).lower(): value})
    assert {"TASKPOINT_BROKER_URL", "TASKPOINT_STORE_URL"} <= seen


def test_the_services_point_at_each_other(compose):
    services = compose["services"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    assert "healthcheck" in services["rabbitmq"]
    mongo = services["mongo"]
    assert "--replSet" in mongo["command"]
    assert "rs.initiate" in " ".join(mongo["healthcheck"]["test"])
    for name, service in taskpoint_services(compose).items():
        env = environment(service)
        assert env["TASKPOINT_BROKER_URL"].startswith("amqp://")
        assert "@rabbitmq:" in env["TASKPOINT_BROKER_URL"], name
        assert env["TASKPOINT_STORE_URL"] == (
            "mongodb://mongo:27017/taskpoint?replicaSet=rs0"
        )
        conditions = {k: v["condition"] for k, v in service["depends_on"].items()}
        assert conditions["rabbitmq"] == conditions["mongo"] == "service_healthy"


def test_workers_scale(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_the_dockerfile_installs_and_runs_taskpoint_as_a_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in dockerfile.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line[0].isupper()
    ]
    keywords = [parts[0] for parts in instructions]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert any(k == "RUN" and "pip install ." in v for k, v in instructions)
    user = [v for k, v in instructions if k == "USER"]
    assert user, "the image runs as root"
    assert user[-1].strip() not in ("root", "0")
    assert keywords.index("USER") > keywords.index("RUN")
    entrypoint = next(v for k, v in instructions if k == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["taskpoint"]
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), f"the Dockerfile copies a missing {path}"
