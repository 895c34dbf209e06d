"""The REST API over real HTTP, with a supervisor on real RabbitMQ."""

from __future__ import annotations

import json

import aiohttp
import pytest

from store.states import TaskState as T
from tests.gateway.conftest import SMALL, Env
from tests.support.processors import ScriptedProcessor
from tests.support.waiting import eventually

API = "/api/v1"


async def state_of(env: Env, task_id: str, *states: str):
    status, body, _ = await env.call("GET", f"{API}/task/{task_id}/checkpoint-status")
    assert status == 200, body
    return body if body["state"] in states else None


def error_shape(body, code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"]


async def test_create_run_status_documents_and_results(env: Env) -> None:
    env.processor.tokens = (3, 2)
    task_id = await env.submit(12)
    done = await eventually(lambda: state_of(env, task_id, "completed"))
    assert done["completed_documents"] == 12
    assert done["progress"] == 1.0
    assert done["token_count"] == {"prompt": 36, "completion": 24, "total": 60}
    assert done["started_at"]
    assert done["completed_at"]
    assert done["throughput"] > 0
    assert done["eta_seconds"] is None
    assert done["can_pause"] is False

    status, page, _ = await env.call("GET", f"{API}/task/{task_id}/documents?limit=5")
    assert status == 200
    assert [d["doc_id"] for d in page["documents"]] == [f"d{i:04d}" for i in range(5)]
    assert page["documents"][0]["attempt_log"][0]["outcome"] == "completed"
    after = page["next_after"]
    status, rest, _ = await env.call(
        "GET", f"{API}/task/{task_id}/documents?after={after}&state=completed"
    )
    assert len(rest["documents"]) == 7
    assert rest["next_after"] is None

    status, result, _ = await env.call(
        "GET", f"{API}/task/{task_id}/documents/d0003/result"
    )
    assert (status, result["result"]) == (200, {"doc": "d0003", "attempt": 1})
    status, body, _ = await env.call("GET", f"{API}/task/{task_id}/documents/zz/result")
    error_shape(body, "document_not_found")
    status, body, _ = await env.call("GET", f"{API}/task/{task_id}/result")
    assert status == 404
    error_shape(body, "no_merged_result")

    status, listed, _ = await env.call("GET", f"{API}/task")
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]


async def test_failed_documents_are_paged_in_the_status(env: Env) -> None:
    env.processor.permanent = {"d0001", "d0003", "d0004"}
    task_id = await env.submit(6)
    await eventually(lambda: state_of(env, task_id, "completed_with_failures"))
    _status, body, _ = await env.call(
        "GET", f"{API}/task/{task_id}/checkpoint-status?failed_limit=2"
    )
    assert body["failed_documents"] == 3
    assert [f["doc_id"] for f in body["failed"]] == ["d0001", "d0003"]
    assert body["failed"][0]["error"]["type"] == "PermanentError"
    _, more, _ = await env.call(
        "GET",
        f"{API}/task/{task_id}/checkpoint-status?failed_limit=2"
        f"&failed_after={body['failed_next']}",
    )
    assert [f["doc_id"] for f in more["failed"]] == ["d0004"]
    assert more["failed_next"] is None


async def test_uploads_and_json_lines_create_tasks(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"alpha text", filename="a.txt", content_type="text/plain")
    form.add_field("file", "b\u00e9ta".encode(), filename="b.md")
    status, body, response = await env.call(
        "POST", f"{API}/task?type=scripted&max_attempts=2", data=form
    )
    assert status == 201, body
    assert body["total_documents"] == 2
    assert response.headers["Location"].endswith("/checkpoint-status")
    task_id = body["task_id"]
    await eventually(lambda: state_of(env, task_id, "completed"))
    contents = await env.store.load_contents(task_id, ["b.md"])
    assert contents["b.md"].text == "b\u00e9ta"

    lines = "\n".join(
        json.dumps({"doc_id": f"l{i}", "text": f"line {i}"}) for i in range(30)
    )
    status, body, _ = await env.call(
        "POST",
        f"{API}/task?type=scripted",
        data=lines + "\n\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert (status, body["total_documents"]) == (201, 30)


async def test_bad_bodies_are_422_with_the_field(env: Env) -> None:
    cases = [
        ({"type": "x", "documents": [{"doc_id": "a"}]}, "documents.0"),
        ({"type": "x", "documents": []}, "documents"),
        (
            {"type": "x", "documents": [{"doc_id": "a", "text": "t"}], "extra": 1},
            "extra",
        ),
        (
            {
                "type": "x",
                "documents": [{"doc_id": "a", "text": "t"}],
                "config": {"max_attempts": 0},
            },
            "config.max_attempts",
        ),
    ]
    for payload, field in cases:
        status, body, _ = await env.call("POST", f"{API}/task", json=payload)
        assert status == 422, (payload, body)
        error_shape(body, "invalid_request")
        assert any(f["field"].startswith(field) for f in body["error"]["fields"]), body

    dup = {
        "type": "x",
        "documents": [{"doc_id": "a", "text": "1"}, {"doc_id": "a", "text": "2"}],
    }
    status, body, _ = await env.call("POST", f"{API}/task", json=dup)
    assert status == 422
    error_shape(body, "duplicate_document")

    status, body, _ = await env.call(
        "POST",
        f"{API}/task",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    error_shape(body, "invalid_json")

    bad_line = '{"doc_id": "a", "text": "t"}\n{"doc_id": "b"}\n'
    status, body, _ = await env.call(
        "POST",
        f"{API}/task?type=x",
        data=bad_line,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 422
    assert body["error"]["fields"][0]["field"].startswith("line 2")
    status, body, _ = await env.call(
        "POST", f"{API}/task", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    form = aiohttp.FormData()
    form.add_field("file", b"\xff\xfe binary", filename="img.bin")
    status, body, _ = await env.call("POST", f"{API}/task?type=x", data=form)
    assert status == 422
    assert "img.bin" in body["error"]["message"]
    # Nothing half-made is left behind by any of these.
    _, listed, _ = await env.call("GET", f"{API}/task")
    assert listed["tasks"] == []


async def test_limits_are_413_and_name_the_limit(env: Env) -> None:
    big = "x" * (SMALL.document_bytes + 1)
    status, body, _ = await env.call(
        "POST",
        f"{API}/task",
        json={"type": "x", "documents": [{"doc_id": "a", "text": big}]},
    )
    assert status == 413
    assert str(SMALL.document_bytes) in body["error"]["message"]

    many = [{"doc_id": f"d{i}", "text": "t"} for i in range(SMALL.documents + 1)]
    status, body, _ = await env.call(
        "POST", f"{API}/task", json={"type": "x", "documents": many}
    )
    assert status == 413
    assert str(SMALL.documents) in body["error"]["message"]

    lines = "".join(json.dumps(d) + "\n" for d in many)
    status, body, _ = await env.call(
        "POST",
        f"{API}/task?type=x",
        data=lines,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 413
    assert str(SMALL.documents) in body["error"]["message"]

    huge = b"y" * (SMALL.body_bytes + 10)
    status, body, _ = await env.call(
        "POST", f"{API}/task", data=huge, headers={"Content-Type": "application/json"}
    )
    assert status == 413
    assert str(SMALL.body_bytes) in body["error"]["message"]

    async def chunks():
        for i in range(SMALL.body_bytes // 900 + 5):
            yield (json.dumps({"doc_id": f"z{i}", "text": "q" * 1000}) + "\n").encode()

    status, body, _ = await env.call(
        "POST",
        f"{API}/task?type=x",
        data=chunks(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 413
    assert str(SMALL.body_bytes) in body["error"]["message"]

    form = aiohttp.FormData()
    form.add_field("file", big.encode(), filename="big.txt")
    status, body, _ = await env.call("POST", f"{API}/task?type=x", data=form)
    assert status == 413
    assert "big.txt" in body["error"]["message"]
    _, listed, _ = await env.call("GET", f"{API}/task")
    assert listed["tasks"] == []


async def test_authentication_and_tenant_isolation(env: Env) -> None:
    task_id = await env.submit(2)
    paths = [
        ("GET", f"{API}/task"),
        ("GET", f"{API}/task/{task_id}/checkpoint-status"),
        ("POST", f"{API}/task/{task_id}/pause"),
        ("GET", f"{API}/task/{task_id}/events"),
    ]
    for method, path in paths:
        for headers in (
            {},
            {"Authorization": "Bearer tp_wrong"},
            {"Authorization": "Basic x"},
        ):
            status, body, response = await env.call(
                method, path, tenant=None, headers=headers
            )
            assert status == 401, (path, headers, body)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            error_shape(body, "unauthorized")
    for suffix in (
        "checkpoint-status",
        "documents",
        "result",
        "documents/d0000/result",
        "events",
    ):
        status, body, _ = await env.call(
            "GET", f"{API}/task/{task_id}/{suffix}", tenant="other"
        )
        assert status == 404, (suffix, body)
        error_shape(body, "task_not_found")
    for action in ("pause", "resume", "cancel", "retry-failed", "events/ticket"):
        status, body, _ = await env.call(
            "POST", f"{API}/task/{task_id}/{action}", tenant="other"
        )
        assert status == 404, (action, body)
    _, listed, _ = await env.call("GET", f"{API}/task", tenant="other")
    assert listed["tasks"] == []


async def test_errors_share_one_shape_and_requests_carry_an_id(env: Env) -> None:
    status, body, response = await env.call(
        "GET", "/nowhere", headers={"X-Request-Id": "abc-123"}
    )
    assert status == 404
    assert response.headers["X-Request-Id"] == "abc-123"
    error_shape(body, "not_found")
    assert body["error"]["request_id"] == "abc-123"
    status, body, response = await env.call("DELETE", f"{API}/task")
    assert status == 405
    assert "GET" in response.headers["Allow"]
    error_shape(body, "method_not_allowed")
    status, body, _ = await env.call("GET", f"{API}/task?limit=0")
    error_shape(body, "invalid_request")
    status, body, _ = await env.call("GET", f"{API}/task?state=sleeping")
    assert status == 422


@pytest.mark.parametrize("processor", [ScriptedProcessor(delay=0.05)])
async def test_control_202_409_and_history(env: Env) -> None:
    task_id = await env.submit(200)
    await eventually(lambda: state_of(env, task_id, "running"))
    status, body, response = await env.call("POST", f"{API}/task/{task_id}/pause")
    assert status == 202, body
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert body["action"] == "pause"
    paused = await eventually(lambda: state_of(env, task_id, "paused"))
    assert paused["can_pause"] is False
    assert paused["paused_at"]
    status, _, _ = await env.call("POST", f"{API}/task/{task_id}/pause")
    assert status == 202  # a repeated pause is accepted
    status, body, _ = await env.call("POST", f"{API}/task/{task_id}/retry-failed")
    assert status == 409
    assert "no document failed" in body["error"]["message"]
    status, _, _ = await env.call("POST", f"{API}/task/{task_id}/resume")
    assert status == 202
    await eventually(lambda: state_of(env, task_id, "running", "completed"))
    status, _, _ = await env.call("POST", f"{API}/task/{task_id}/cancel")
    assert status == 202
    done = await eventually(lambda: state_of(env, task_id, "cancelled"))
    assert done["cancelled_at"]
    status, body, _ = await env.call("POST", f"{API}/task/{task_id}/resume")
    assert status == 409
    error_shape(body, "transition_refused")
    assert "cancelled" in body["error"]["message"]
    history = await env.store.history(task_id)
    refused = [h for h in history if not h.accepted]
    assert refused[-1].request_id == body["error"]["request_id"]
    assert [h.to_state for h in history if h.accepted][-3:] == [
        T.RUNNING,
        T.CANCELLING,
        T.CANCELLED,
    ]


async def test_legacy_task_refuses_pause_and_retry_failed_restarts(env: Env) -> None:
    env.processor.gate = __import__("asyncio").Event()
    legacy = await env.submit(3, use_checkpoints=False)
    status, body, _ = await env.call("POST", f"{API}/task/{legacy}/pause")
    assert status == 409
    assert "all-or-nothing" in body["error"]["message"]
    status, body, _ = await env.call("GET", f"{API}/task/{legacy}/checkpoint-status")
    assert body["can_pause"] is False
    env.processor.gate.set()
    env.processor.gate = None

    env.processor.permanent = {"d0001"}
    task_id = await env.submit(3)
    await eventually(lambda: state_of(env, task_id, "completed_with_failures"))
    env.processor.permanent = set()
    status, body, _ = await env.call(
        "POST", f"{API}/task/{task_id}/retry-failed", json={"doc_ids": ["d0000"]}
    )
    assert status == 409
    assert "none of the named" in body["error"]["message"]
    status, body, _ = await env.call(
        "POST", f"{API}/task/{task_id}/retry-failed", json={"doc_ids": "d0001"}
    )
    assert status == 422
    status, body, _ = await env.call(
        "POST", f"{API}/task/{task_id}/retry-failed", json={"doc_ids": ["d0001"]}
    )
    assert status == 202
    await eventually(lambda: state_of(env, task_id, "completed"))


async def test_control_is_503_when_the_broker_is_gone_and_nothing_changes(
    env: Env,
) -> None:
    env.processor.gate = __import__("asyncio").Event()
    task_id = await env.submit(5)
    await eventually(lambda: state_of(env, task_id, "running"))
    before = await env.store.history(task_id)
    await env.broker.stop()
    status, body, response = await env.call("POST", f"{API}/task/{task_id}/pause")
    assert status == 503, body
    error_shape(body, "broker_unavailable")
    assert response.headers["Retry-After"]
    status, ready, _ = await env.call("GET", "/readyz")
    assert status == 503
    assert ready["broker"] != "ok"
    assert ready["store"] == "ok"
    assert await env.store.history(task_id) == before
    assert (await env.store.get_task(task_id)).state is T.RUNNING
    env.processor.gate.set()


async def test_health_ready_and_metrics(env: Env) -> None:
    env.processor.gate = __import__("asyncio").Event()
    task_id = await env.submit(4)
    await eventually(lambda: state_of(env, task_id, "running"))
    assert (await env.call("GET", "/healthz", tenant=None))[0] == 200
    status, ready, _ = await env.call("GET", "/readyz", tenant=None)
    assert (status, ready["status"]) == (200, "ok")
    await env.call("POST", f"{API}/task/{task_id}/resume")
    status, text, response = await env.call("GET", "/metrics", tenant=None)
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert (
        f'taskpoint_task_documents{{task_id="{task_id}",tenant="acme",state="running"}}'
        in text
    )
    assert f'taskpoint_task_queue_depth{{task_id="{task_id}",tenant="acme"}}' in text
    assert (
        'taskpoint_control_requests_total{action="resume",outcome="accepted"} 1' in text
    )
    assert 'route="/api/v1/task/{task_id}/checkpoint-status",status="200"' in text
    assert "taskpoint_control_publish_seconds_bucket" in text
    env.processor.gate.set()


async def test_status_estimates_the_tokens_still_to_spend(env):
    env.processor.tokens = (6, 4)
    env.processor.delay = 0.05
    task_id = await env.submit(40, token_budget=100)
    paused = await eventually(lambda: state_of(env, task_id, "paused"))
    assert paused["token_budget"] == 100
    assert "token budget of 100 reached" in paused["reason"]
    spent = paused["token_count"]["total"]
    settled = paused["completed_documents"] + paused["failed_documents"]
    open_now = 40 - settled - paused["cancelled_documents"]
    assert paused["tokens_to_spend"] == round(spent / settled * open_now)
