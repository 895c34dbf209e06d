"""schemathesis against the live gateway: no 5xx, every answer fits the schema.

The generated requests run in a worker thread (schemathesis calls with
``requests``, synchronously) while the gateway serves them on the test's
event loop. The event stream is left out: a valid task id would hold the
connection open until its task ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway.conftest import Env

EXAMPLES = 25
SKIPPED = ("/events",)


def fuzz(document: dict[str, Any], base_url: str, headers: dict[str, str]) -> int:
    """Run every operation's examples; return how many calls were made."""
    schema = schemathesis.openapi.from_dict(document)
    calls = 0
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith(SKIPPED):
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

        run()
    return calls


# schemathesis's own strategies draw from ``random``, which hypothesis flags
# with a deprecation warning at random; that is theirs, not the gateway's.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_no_server_error_and_every_answer_fits_the_schema(env: Env) -> None:
    task_id = await env.submit(3)
    status, document, _ = await env.call("GET", "/api/v1/openapi.json", tenant=None)
    assert status == 200
    # Give the path parameters a real task now and then.
    task_param = document["paths"]
    for path in task_param:
        for op in task_param[path].values():
            for p in op["parameters"]:
                if p["name"] == "task_id":
                    p["schema"] = {"enum": [task_id, "nosuchtask"]}
    calls = await asyncio.to_thread(fuzz, document, env.url, env.auth())
    assert calls > 100
