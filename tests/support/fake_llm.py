"""A local OpenAI-compatible server for tests: deterministic, and faulty on demand.

It answers ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` on
127.0.0.1 at a free port. Replies are derived from the prompt so that results
can be checked:

- a summary request (system tag ``[taskpoint:summarise]``) gets
  ``"summary(<words>): <first eight words>"``;
- a graph request gets the capitalised words of the first user message as
  entities of type ``thing``, and each consecutive pair as a relation;
- anything else gets ``"ok"``.

``usage`` is ``prompt = characters of all messages // 4`` and ``completion =
characters of the reply // 4``. Faults are set per test on the instance's
attributes; counters like ``throttle_next`` count down call by call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")


@dataclass
class Call:
    """One request as the fake saw it."""

    at: float
    path: str
    concurrency: int
    status: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    model: str | None = None
    json_mode: bool = False
    reply: str = ""


@dataclass
class FakeLLM:
    """The server and its controls. Use ``async with FakeLLM() as fake``."""

    latency: float = 0.0
    throttle_next: int = 0
    throttle_above: int | None = None
    retry_after: str | None = "0"
    hang_next: int = 0
    hang_seconds: float = 5.0
    fail_next: int = 0
    malformed_body_next: int = 0
    malformed_content_next: int = 0
    reject_next: int = 0
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _area: float = 0.0
    _changed: float = 0.0
    _first: float | None = None
    _last: float = 0.0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        """The base URL, ``/v1`` included."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeLLM:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def mean_in_flight(self) -> float:
        """The time-weighted calls in flight, first arrival to last departure."""
        if self._first is None or self._last <= self._first:
            return 0.0
        return self._area / (self._last - self._first)

    def statuses(self) -> list[int]:
        """The HTTP status of every finished call, in arrival order."""
        return [c.status for c in self.calls]

    def _enter(self) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = self._changed = now
        self._area += self.in_flight * (now - self._changed)
        self._changed = now
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _leave(self) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._changed)
        self._changed = self._last = now
        self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._enter()
        try:
            body = await request.json()
            call = Call(
                at=time.monotonic(),
                path="chat",
                concurrency=self.in_flight,
                messages=body.get("messages", []),
                model=body.get("model"),
                json_mode=body.get("response_format", {}).get("type") == "json_object",
            )
            self.calls.append(call)
            response = await self._fault(call) or await self._chat_reply(call)
            call.status = response.status
            return response
        finally:
            self._leave()

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        self._enter()
        try:
            body = await request.json()
            call = Call(
                at=time.monotonic(), path="embeddings", concurrency=self.in_flight
            )
            self.calls.append(call)
            response = await self._fault(call)
            if response is None:
                texts = body["input"]
                data = [
                    {"index": i, "embedding": embedding(t), "object": "embedding"}
                    for i, t in enumerate(texts)
                ]
                prompt = sum(len(t) for t in texts) // 4
                usage = {"prompt_tokens": prompt, "total_tokens": prompt}
                response = web.json_response({"data": data, "usage": usage})
            call.status = response.status
            return response
        finally:
            self._leave()

    async def _fault(self, call: Call) -> web.Response | None:
        if self.hang_next > 0:
            self.hang_next -= 1
            await asyncio.sleep(self.hang_seconds)
        if self.throttle_next > 0 or (
            self.throttle_above is not None and call.concurrency > self.throttle_above
        ):
            self.throttle_next = max(0, self.throttle_next - 1)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response(
                {"error": {"message": "rate limited"}}, status=429, headers=headers
            )
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.reject_next > 0:
            self.reject_next -= 1
            return web.json_response(
                {"error": {"message": "model 'nope' does not exist"}}, status=404
            )
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.malformed_body_next > 0:
            self.malformed_body_next -= 1
            return web.Response(text='{"choices": [', content_type="application/json")
        return None

    async def _chat_reply(self, call: Call) -> web.Response:
        if self.malformed_content_next > 0:
            self.malformed_content_next -= 1
            content = 'Sure! Here is the graph: {"entities": [oops'
        else:
            content = reply_for(call.messages)
        call.reply = content
        return web.json_response(
            {
                "id": "fake",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}}
                ],
                "usage": usage_for(call.messages, content),
            }
        )


def usage_for(messages: list[dict[str, str]], content: str) -> dict[str, int]:
    """The usage the fake reports for one chat call."""
    prompt = sum(len(m.get("content", "")) for m in messages) // 4
    completion = len(content) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def reply_for(messages: list[dict[str, str]]) -> str:
    """The fake's deterministic reply to a chat conversation."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    if system.startswith("[taskpoint:summarise]"):
        words = user.split()
        return f"summary({len(words)}): {' '.join(words[:8])}"
    if system.startswith("[taskpoint:extract-graph]"):
        return json.dumps(graph_for(user))
    return "ok"


def graph_for(text: str) -> dict[str, Any]:
    """The graph the fake extracts from ``text``."""
    names = list(dict.fromkeys(_CAPITALISED.findall(text)))
    return {
        "entities": [
            {"name": n, "type": "thing", "description": f"{n} is named"} for n in names
        ],
        "relations": [
            {"source": a, "target": b, "description": f"{a} precedes {b}"}
            for a, b in itertools.pairwise(names)
        ],
    }


def embedding(text: str, dims: int = 16) -> list[float]:
    """A bag-of-words vector: each word adds one to a crc32-chosen dimension."""
    vector = [0.0] * dims
    for word in re.findall(r"[a-z]+", text.lower()):
        vector[zlib.crc32(word.encode()) % dims] += 1.0
    return vector


class Embedded:
    """A real Supervisor on the in-process broker and SQLite, for processor tests.

    ``async with Embedded(tmp_path, processor) as env``; ``env.run(docs)``
    creates a task of the processor's type and waits for it to end.
    """

    def __init__(self, tmp_path: Any, processor: Any, **config: Any) -> None:
        from actors.broker_memory import MemoryBroker
        from actors.supervisor import SupervisorConfig
        from store.sqlite import SQLiteStore

        self.store = SQLiteStore(tmp_path / "cp.db", synchronous="normal")
        self.broker = MemoryBroker()
        self.processor = processor
        # A short lease: a document waiting to retry is published again no
        # sooner than a lease after its last publication.
        config = {"sweep_interval": 0.1, "lease_seconds": 1.5, **config}
        self.config = SupervisorConfig(**config)
        self.supervisor: Any = None

    async def __aenter__(self) -> Embedded:
        from actors.supervisor import Supervisor

        await self.store.start()
        await self.broker.start()
        self.supervisor = Supervisor(
            self.store, self.broker, self.config, processors=lambda _: self.processor
        )
        await self.supervisor.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.supervisor.stop(timeout=30)
        await self.broker.stop()
        await self.store.stop()

    async def run(
        self, documents: dict[str, str], *, within: float = 30.0, **config: Any
    ) -> Any:
        """Run a task over ``documents`` (doc id -> text, or a URI with ://)."""
        from store.models import DocumentInput, NewTask, TaskConfig
        from tests.support.waiting import eventually

        inputs = [
            DocumentInput(doc_id=d, uri=t)
            if "://" in t[:12]
            else DocumentInput(doc_id=d, text=t)
            for d, t in documents.items()
        ]
        new = NewTask(tenant="t", type=self.processor.name, config=TaskConfig(**config))
        task = await self.store.create_task(new, inputs)
        return await eventually(lambda: self._ended(task.task_id), within=within)

    async def _ended(self, task_id: str) -> Any:
        from store.states import is_final

        task = await self.store.get_task(task_id)
        counts = await self.store.counts(task_id)
        return task if is_final(task.state) and counts.open == 0 else None
