"""RabbitMQ's management HTTP API, as an operator would use it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

MANAGEMENT = "http://127.0.0.1:15672/api"
HEADERS = {"Authorization": aiohttp.encode_basic_auth("guest", "guest")}


async def delete_prefixed(prefix: str) -> None:
    """Delete every queue and exchange of the default vhost named ``prefix.*``."""
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        for kind in ("queues", "exchanges"):
            async with http.get(f"{MANAGEMENT}/{kind}/%2F") as response:
                found = await response.json()
            for item in found:
                if item["name"].startswith(f"{prefix}."):
                    name = quote(item["name"], safe="")
                    async with http.delete(f"{MANAGEMENT}/{kind}/%2F/{name}"):
                        pass


async def publish_by_http(queue: str, payload: str | dict[str, Any]) -> bool:
    """Publish to a queue through the console's API, persistent, as JSON.

    Returns whether the message was routed (False: no such queue yet).
    """
    body = payload if isinstance(payload, str) else json.dumps(payload)
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(
            f"{MANAGEMENT}/exchanges/%2F/amq.default/publish",
            json={
                "routing_key": queue,
                "payload": body,
                "payload_encoding": "string",
                "properties": {"delivery_mode": 2, "content_type": "application/json"},
            },
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return bool((await response.json())["routed"])


async def peek(queue: str, count: int = 10) -> list[dict[str, Any]]:
    """Return up to ``count`` messages of a queue, leaving them there."""
    url = f"{MANAGEMENT}/queues/%2F/{quote(queue, safe='')}/get"
    body = {"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"}
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(url, json=body) as response,
    ):
        if response.status == 404:
            return []
        result: list[dict[str, Any]] = await response.json()
        return result


async def broadcast_listeners(prefix: str) -> int:
    """Count the supervisors listening: each declares a broadcast queue of its own."""
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.get(f"{MANAGEMENT}/queues/%2F") as response,
    ):
        queues = await response.json()
    return sum(q["name"].startswith(f"{prefix}.broadcast.") for q in queues)
