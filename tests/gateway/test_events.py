"""The event stream: replay with since, live transitions, refusals, tickets."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.gateway.conftest import Env
from tests.support.processors import ScriptedProcessor
from tests.support.waiting import eventually

API = "/api/v1"


async def read_events(response: aiohttp.ClientResponse, out: list[dict]) -> None:
    """Append every event of an SSE response to ``out`` until it ends."""
    event: dict = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if event:
                out.append(event)
            event = {}
            continue
        key, _, value = line.partition(": ")
        event[key] = json.loads(value) if key == "data" else value


def transitions(events: list[dict]) -> list[tuple[str, bool]]:
    return [
        (e["data"]["to_state"], e["data"]["accepted"])
        for e in events
        if e["event"] == "transition"
    ]


async def test_replay_live_transitions_refusals_and_end(env: Env) -> None:
    env.processor.gate = asyncio.Event()
    task_id = await env.submit(6)
    url = f"{env.url}{API}/task/{task_id}/events"
    events: list[dict] = []
    async with env.http.get(url, headers=env.auth()) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        reader = asyncio.create_task(read_events(response, events))
        await eventually(lambda: _has(events, ("running", True)))
        status, _, _ = await env.call("POST", f"{API}/task/{task_id}/pause")
        assert status == 202
        await eventually(lambda: _has(events, ("pausing", True)))
        assert any(e["event"] == "progress" for e in events)
        env.processor.gate.set()
        await eventually(lambda: _has(events, ("paused", True)))
        status, _, _ = await env.call("POST", f"{API}/task/{task_id}/retry-failed")
        assert status == 409
        await eventually(lambda: _has(events, ("running", False)))
        status, _, _ = await env.call("POST", f"{API}/task/{task_id}/resume")
        await asyncio.wait_for(reader, 15)  # the stream ends after completion
    seen = transitions(events)
    assert seen[0] == ("pending", True)
    assert seen[-1] == ("completed", True)
    ids = [int(e["id"]) for e in events if e["event"] == "transition"]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress[-1]["total_documents"] == 6

    # Replay from a seq: only what came after it, then the stream ends.
    replay: list[dict] = []
    async with env.http.get(f"{url}?since={ids[2]}", headers=env.auth()) as response:
        await asyncio.wait_for(read_events(response, replay), 10)
    assert [int(e["id"]) for e in replay] == ids[3:]
    again: list[dict] = []
    headers = {**env.auth(), "Last-Event-ID": str(ids[-2])}
    async with env.http.get(url, headers=headers) as response:
        await asyncio.wait_for(read_events(response, again), 10)
    assert [int(e["id"]) for e in again] == ids[-1:]


async def _has(events: list[dict], item: tuple[str, bool]) -> bool:
    return item in transitions(events)


@pytest.mark.parametrize("processor", [ScriptedProcessor(delay=0.02)])
async def test_tickets_are_single_use_bound_and_never_the_token(env: Env) -> None:
    task_id = await env.submit(5)
    other = await env.submit(1, tenant="other")
    status, body, _ = await env.call("POST", f"{API}/task/{task_id}/events/ticket")
    assert status == 201
    assert body["expires_at"]
    ticket = body["ticket"]
    url = f"{env.url}{API}/task/{task_id}/events"
    events: list[dict] = []
    async with env.http.get(f"{url}?ticket={ticket}") as response:
        assert response.status == 200
        await asyncio.wait_for(read_events(response, events), 15)
    assert transitions(events)[-1] == ("completed", True)
    async with env.http.get(f"{url}?ticket={ticket}") as response:
        assert response.status == 401  # spent
    _, body, _ = await env.call("POST", f"{API}/task/{task_id}/events/ticket")
    wrong_task = f"{env.url}{API}/task/{other}/events?ticket={body['ticket']}"
    async with env.http.get(wrong_task) as response:
        assert response.status == 401
    token_in_url = f"{url}?access_token={env.tokens['acme']}&token={env.tokens['acme']}"
    async with env.http.get(token_in_url) as response:
        assert response.status == 401
