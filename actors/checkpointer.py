"""Grouped checkpoint writes: many documents' outcomes per store round trip.

Workers hand their outcomes here and wait until the write is durable. While one
write is in flight, the outcomes that arrive meanwhile gather, and the next
write carries all of them (group commit): under load a round trip serves many
documents, and an idle system still writes at once, with no timer to wait for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from actors import failpoints
from store.base import CheckpointStore
from store.models import Outcome, SettleResult

logger = logging.getLogger(__name__)

Pending = tuple[Outcome, asyncio.Future[SettleResult]]


class Checkpointer:
    """Writes outcomes in groups, one ``settle`` per task per round.

    Args:
        store: the checkpoint store.
        max_batch: the most outcomes of one task in one write.
    """

    def __init__(self, store: CheckpointStore, *, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: dict[str, list[Pending]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Outcomes waiting to be written."""
        return sum(len(items) for items in self._pending.values())

    def start(self) -> None:
        """Start the writer."""
        if self._writer is None:
            self._writer = asyncio.create_task(
                self._write_forever(), name="checkpointer"
            )

    async def stop(self) -> None:
        """Write what is waiting, then stop the writer."""
        while self.backlog:
            await self._write_round()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    async def submit(self, task_id: str, outcome: Outcome) -> SettleResult:
        """Queue an outcome and return once it is durable (or refused as stale)."""
        future: asyncio.Future[SettleResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[task_id].append((outcome, future))
        self._wake.set()
        # Not shielded: the future is this caller's alone, and if the caller
        # is cancelled the writer still writes the outcome (it skips the
        # resolved future).
        return await future

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.backlog:
                await self._write_round()

    async def _write_round(self) -> None:
        for task_id in list(self._pending):
            items = self._pending[task_id][: self.max_batch]
            del self._pending[task_id][: len(items)]
            if not self._pending[task_id]:
                del self._pending[task_id]
            await self._write(task_id, items)

    async def _write(self, task_id: str, items: list[Pending]) -> None:
        if failpoints.armed("mid-group-write") and len(items) > 1:
            # For fault tests only: write the group in two halves, so that a
            # kill can land between them.
            half = len(items) // 2
            await self._write_group(task_id, items[:half])
            failpoints.hit("mid-group-write")
            items = items[half:]
        await self._write_group(task_id, items)

    async def _write_group(self, task_id: str, items: list[Pending]) -> None:
        try:
            results = await self.store.settle(task_id, [o for o, _ in items])
        except Exception as err:
            # The write failed as a whole: every waiter learns it, and since no
            # message is acked on the strength of it, nothing is lost.
            logger.warning(
                "checkpoint write failed task_id=%s documents=%d: %s",
                task_id,
                len(items),
                err,
            )
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(items, results, strict=True):
            if not future.done():
                future.set_result(result)
