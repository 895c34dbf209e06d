"""Processors for tests: user code that sleeps, fails or counts on demand.

These stand in for a user's processor, not for any part of taskpoint.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors.processors import PermanentError, ProcessorContext, TransientError


@dataclass
class ScriptedProcessor:
    """Does what a test tells it per document id.

    Attributes:
        delay: seconds every document takes.
        transient: doc id -> how many attempts fail transiently before success.
        permanent: doc ids that fail permanently.
        tokens: (prompt, completion) spent by every attempt.
        started: doc ids in the order their attempts started.
        gate: when set, documents wait for it before finishing.
    """

    name: str = "scripted"
    delay: float = 0.0
    transient: dict[str, int] = field(default_factory=dict)
    permanent: set[str] = field(default_factory=set)
    tokens: tuple[int, int] = (0, 0)
    started: list[str] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event | None = None
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    cpu_thread: str | None = None

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        task_id = ctx.task.task_id
        self.in_flight[task_id] += 1
        self.most_in_flight[task_id] = max(
            self.most_in_flight[task_id], self.in_flight[task_id]
        )
        try:
            return await self._process(ctx)
        finally:
            self.in_flight[task_id] -= 1

    async def _process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        self.started.append(ctx.doc_id)
        self.cpu_thread = await ctx.run_cpu(lambda: threading.current_thread().name)
        self.attempts[ctx.doc_id] += 1
        ctx.tokens.add(*self.tokens)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if ctx.doc_id in self.permanent:
            raise PermanentError(f"document {ctx.doc_id!r} is unreadable")
        if self.attempts[ctx.doc_id] <= self.transient.get(ctx.doc_id, 0):
            raise TransientError(f"provider busy for {ctx.doc_id!r}")
        return {"doc": ctx.doc_id, "attempt": ctx.attempt}


@dataclass
class MergingProcessor(ScriptedProcessor):
    """A scripted processor whose task ends with a finalize phase.

    Its merge keeps the sorted ids of the merged documents and counts the
    merge calls; ``merge_delay`` slows each batch down (seconds, on a thread).
    """

    name: str = "merging"
    merge_delay: float = 0.0
    merges: int = 0

    def merge(self, base: dict[str, Any] | None, results: list[dict[str, Any]]):
        self.merges += 1
        if self.merge_delay:
            time.sleep(self.merge_delay)
        docs = set((base or {}).get("docs", [])) | {r["doc"] for r in results}
        return {"docs": sorted(docs)}
