"""The document worker actor: one document at a time, from claim to checkpoint.

A worker is told a :class:`WorkItem` (a claimed document of a task), asks its
supervisor whether the document may still start, runs the task's processor on
it under a time limit, stores the result, and hands the outcome to the
checkpointer. It reports back when the outcome is durable, and only then is
its slot free again, so that "in flight" always means "not yet checkpointed".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from actors import failpoints
from actors.checkpointer import Checkpointer
from actors.core import Actor
from actors.llm import LLMBackend
from actors.processors.base import Processor, ProcessorContext
from store.base import CheckpointStore
from store.errors import StaleFence, StoreError
from store.models import (
    Claim,
    DocumentError,
    Outcome,
    SettleResult,
    Task,
    TokenUsage,
    utcnow,
)
from store.states import DocumentState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """A claimed document of a task, handed to a worker."""

    task: Task
    claim: Claim
    processor: Processor

    @property
    def key(self) -> tuple[str, str]:
        """The task and document ids."""
        return self.task.task_id, self.claim.doc_id


@dataclass(frozen=True)
class Finished:
    """What a worker reports to its supervisor after a document."""

    worker: DocumentWorker
    item: WorkItem
    outcome: Outcome | None
    written: bool


class DocumentWorker(Actor):
    """Processes the documents its supervisor tells it, one at a time.

    Args:
        name: the worker's name, for logs.
        store: the checkpoint store (results are written through it).
        checkpointer: where outcomes are written in groups.
        may_start: asked right before a document starts; False releases it.
        report: called with a :class:`Finished` once the outcome is durable.
        time_limit: the longest one attempt may run, in seconds.
        llm: the process's LLM backend, handed to processors in their context.
    """

    def __init__(
        self,
        name: str,
        *,
        store: CheckpointStore,
        checkpointer: Checkpointer,
        may_start: Callable[[WorkItem], bool],
        report: Callable[[Finished], None],
        time_limit: float,
        llm: LLMBackend | None = None,
    ) -> None:
        super().__init__(name)
        self.llm = llm
        self.store = store
        self.checkpointer = checkpointer
        self.may_start = may_start
        self.report = report
        self.time_limit = time_limit
        self.current: WorkItem | None = None
        self._running: asyncio.Task[Any] | None = None
        self._interrupt_as: DocumentState | None = None

    async def on_receive(self, message: Any) -> None:
        """Process one :class:`WorkItem`; runs in the worker's own task."""
        item: WorkItem = message
        self.current = item
        self._interrupt_as = None
        try:
            if self.may_start(item):
                outcome = await self._attempt_document(item)
            else:
                outcome = released(item.claim)
            written = await self._checkpoint(item, outcome)
        finally:
            self.current = None
        self.report(Finished(self, item, outcome, written))

    def interrupt(self, task_id: str, as_state: DocumentState) -> None:
        """Stop the running attempt of ``task_id``'s document, if any.

        ``as_state`` is what the document becomes: ``cancelled`` for a cancel,
        ``pending`` for a shutdown or a lost lease (the attempt is given back).
        """
        item, running = self.current, self._running
        if item is None or item.task.task_id != task_id or self._interrupt_as:
            return
        self._interrupt_as = as_state
        if running is not None:
            # The worker's task is suspended inside the processor (the flag is
            # only set around that await): the cancel lands there, and
            # _attempt_document turns it into the interrupted outcome.
            running.cancel()

    async def _attempt_document(self, item: WorkItem) -> Outcome | None:
        task, claim = item.task, item.claim
        ctx = ProcessorContext(
            task=task,
            doc_id=claim.doc_id,
            attempt=claim.attempt,
            fence=claim.fence,
            store=self.store,
            llm=self.llm,
        )
        started = time.monotonic()
        try:
            result = await self._run_processor(item, ctx)
        except asyncio.CancelledError:
            if self._interrupt_as is None:
                raise  # the worker itself is being cancelled
            self._uncancel()
            outcome: Outcome | None = Outcome(
                doc_id=claim.doc_id,
                fence=claim.fence,
                state=self._interrupt_as,
                tokens=ctx.tokens.usage(),
            )
        except Exception as error:
            outcome = failed(item, error, ctx.tokens.usage())
        else:
            outcome = await self._completed(item, result, ctx.tokens.usage())
        if outcome is not None:
            log_finish(item, outcome, time.monotonic() - started)
        return outcome

    async def _run_processor(
        self, item: WorkItem, ctx: ProcessorContext
    ) -> dict[str, Any] | None:
        self._running = asyncio.current_task()
        try:
            async with asyncio.timeout(self.time_limit):
                return await item.processor.process(ctx)
        finally:
            self._running = None

    def _uncancel(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()

    async def _completed(
        self, item: WorkItem, result: dict[str, Any] | None, tokens: TokenUsage
    ) -> Outcome | None:
        task_id, claim = item.task.task_id, item.claim
        ref = None
        if result is not None:
            try:
                # The result is stored before the document is marked completed,
                # under the document's own id: a re-run overwrites it.
                ref = await self.store.put_result(
                    task_id, claim.doc_id, claim.fence, result
                )
            except StaleFence:
                logger.warning(
                    "lease lost before the result was stored task_id=%s doc_id=%s",
                    task_id,
                    claim.doc_id,
                )
                return None
        return Outcome(
            doc_id=claim.doc_id,
            fence=claim.fence,
            state=DocumentState.COMPLETED,
            tokens=tokens,
            result_ref=ref,
        )

    async def _checkpoint(self, item: WorkItem, outcome: Outcome | None) -> bool:
        if outcome is None:
            return False
        result = await self._submit(item, outcome)
        if result is None:
            return False
        failpoints.hit("after-checkpoint")
        if result == "stale":
            logger.warning(
                "outcome refused, another worker holds the document task_id=%s "
                "doc_id=%s fence=%d",
                item.task.task_id,
                item.claim.doc_id,
                item.claim.fence,
            )
        return result != "stale"

    async def _submit(self, item: WorkItem, outcome: Outcome) -> SettleResult | None:
        """Write the outcome, trying again while the store is out of reach.

        Past the lease there is no point: the document will be reclaimed and
        run again, and this outcome would be refused as stale anyway.
        """
        delay, deadline = 0.05, item.claim.lease_expires_at
        while True:
            try:
                return await self.checkpointer.submit(item.task.task_id, outcome)
            except StoreError as err:
                if utcnow() + timedelta(seconds=delay) >= deadline:
                    logger.error(
                        "outcome not written before the lease ended task_id=%s "
                        "doc_id=%s: %s",
                        item.task.task_id,
                        item.claim.doc_id,
                        err,
                    )
                    return None
                logger.warning(
                    "checkpoint write failed, trying again task_id=%s doc_id=%s: %s",
                    item.task.task_id,
                    item.claim.doc_id,
                    err,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def released(claim: Claim) -> Outcome:
    """Return the outcome that gives a claimed, unstarted document back."""
    return Outcome(doc_id=claim.doc_id, fence=claim.fence, state=DocumentState.PENDING)


def failed(item: WorkItem, error: BaseException, tokens: TokenUsage) -> Outcome:
    """Return the outcome of an attempt that raised ``error``.

    A permanent error, or a transient one on the last allowed attempt, fails
    the document; otherwise it waits to be retried after a backoff with
    jitter. The wait is a time in the store, not a held worker slot, so it
    survives a restart.
    """
    config, claim = item.task.config, item.claim
    permanent = bool(getattr(error, "permanent", False))
    if isinstance(error, TimeoutError):
        error = TimeoutError(f"the attempt ran longer than its time limit: {error}")
    detail = DocumentError(
        type=type(error).__name__, message=str(error)[:2000], permanent=permanent
    )
    if permanent or claim.attempt >= config.max_attempts:
        logger.error(
            "document failed task_id=%s doc_id=%s attempts=%d error=%s: %s",
            item.task.task_id,
            claim.doc_id,
            claim.attempt,
            detail.type,
            detail.message,
        )
        return Outcome(
            doc_id=claim.doc_id,
            fence=claim.fence,
            state=DocumentState.FAILED,
            tokens=tokens,
            error=detail,
        )
    delay = config.retry_delay(claim.attempt)
    logger.warning(
        "document will be retried task_id=%s doc_id=%s attempt=%d in=%.1fs error=%s",
        item.task.task_id,
        claim.doc_id,
        claim.attempt,
        delay,
        detail.type,
    )
    return Outcome(
        doc_id=claim.doc_id,
        fence=claim.fence,
        state=DocumentState.RETRY_WAIT,
        tokens=tokens,
        error=detail,
        next_attempt_at=utcnow() + timedelta(seconds=delay),
    )


def log_finish(item: WorkItem, outcome: Outcome, seconds: float) -> None:
    """Log one INFO line for a document that completed."""
    if outcome.state is DocumentState.COMPLETED:
        logger.info(
            "document completed task_id=%s doc_id=%s attempt=%d seconds=%.3f",
            item.task.task_id,
            item.claim.doc_id,
            item.claim.attempt,
            seconds,
        )
