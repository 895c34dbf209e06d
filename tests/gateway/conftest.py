"""A running gateway and supervisor on real RabbitMQ and a SQLite store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from actors.broker_rabbitmq import RabbitBroker
from actors.llm import LLMBackend
from actors.processors import Processor
from actors.supervisor import Supervisor, SupervisorConfig
from gateway.api import Limits
from gateway.app import make_app
from gateway.settings import Settings
from gateway.tokens import hash_token, new_token
from store.sqlite import SQLiteStore
from tests.support.processors import ScriptedProcessor
from tests.support.rabbit import delete_prefixed

SMALL = Limits(body_bytes=256 * 1024, document_bytes=8 * 1024, documents=300)


@dataclass
class Env:
    """What a gateway test talks to."""

    url: str
    http: aiohttp.ClientSession
    store: SQLiteStore
    broker: RabbitBroker
    processor: ScriptedProcessor
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[tenant]}"}

    async def call(
        self, method: str, path: str, *, tenant: str | None = "acme", **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {**(self.auth(tenant) if tenant else {}), **kw.pop("headers", {})}
        async with self.http.request(
            method, self.url + path, headers=headers, **kw
        ) as response:
            if response.content_type == "application/json":
                body = await response.json()
            else:
                body = await response.text()
            return response.status, body, response

    async def submit(self, n: int, tenant: str = "acme", **config: Any) -> str:
        docs = [{"doc_id": f"d{i:04d}", "text": f"text {i}"} for i in range(n)]
        status, body, _ = await self.call(
            "POST",
            "/api/v1/task",
            tenant=tenant,
            json={"type": "scripted", "documents": docs, "config": config},
        )
        assert status == 201, body
        return str(body["task_id"])


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    amqp_url: str,
    prefix: str,
    processor: ScriptedProcessor,
    *,
    processors: Callable[[str], Processor] | None = None,
    llm: LLMBackend | None = None,
) -> AsyncIterator[Env]:
    store = SQLiteStore(tmp_path / "cp.db", synchronous="normal")
    await store.start()
    gw_broker = RabbitBroker(amqp_url, prefix=prefix, operation_timeout=3)
    sv_broker = RabbitBroker(amqp_url, prefix=prefix, operation_timeout=10)
    await gw_broker.start()
    await sv_broker.start()
    supervisor = Supervisor(
        store,
        sv_broker,
        SupervisorConfig(sweep_interval=0.1, lease_seconds=5, concurrency=4),
        processors=processors or (lambda _: processor),
        llm=llm,
    )
    await supervisor.start()
    app = make_app(Settings(), store, gw_broker, limits=SMALL, publish_timeout=2)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tokens = {}
    for tenant in ("acme", "other"):
        tokens[tenant] = new_token()
        await store.put_token(hash_token(tokens[tenant]), tenant)
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(
                f"http://127.0.0.1:{port}", http, store, gw_broker, processor, tokens
            )
    finally:
        await runner.cleanup()
        await supervisor.stop(timeout=30)
        await sv_broker.stop()
        with contextlib.suppress(Exception):
            await gw_broker.stop()
        await store.stop()
        await delete_prefixed(prefix)


@pytest.fixture
def processor() -> ScriptedProcessor:
    return ScriptedProcessor()


@pytest.fixture
async def env(
    tmp_path: Path, amqp_url: str, broker_prefix: str, processor: ScriptedProcessor
) -> AsyncIterator[Env]:
    async with running_gateway(tmp_path, amqp_url, broker_prefix, processor) as e:
        yield e
