"""The checkpoint store's interface, shared by the SQLite and MongoDB stores.

The store is the source of truth for every task and document. Every operation
that changes a document is guarded: a claim by the document's state, a write
after a claim by the fencing token the claim handed out. Stale writers are
refused, never merged.

Counters. A task keeps stored counters of the documents that reached a final
state (completed, failed, cancelled) and of the tokens spent; they change in the
same write as the documents where the store can do that, or right after it
(see each store). The open states (pending, running, retry_wait) are not stored
counters: running and retry_wait are counted through an index (bounded by what
is in flight or waiting), and pending is what remains of the total. Claiming
therefore never touches the task's record, and a status read costs O(1) plus
the documents in flight or waiting, never O(total). ``recount`` rebuilds the
stored counters from the documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from store.models import (
    Claim,
    DocumentCheckpoint,
    DocumentContent,
    DocumentInput,
    NewTask,
    Outcome,
    ReclaimReport,
    SettleResult,
    Task,
    TaskCounts,
    Transition,
)
from store.states import DocumentState, TaskState

SCHEMA_VERSION = 1
DEFAULT_BATCH = 1000

Documents = Iterable[DocumentInput] | AsyncIterable[DocumentInput]


@runtime_checkable
class CheckpointStore(Protocol):
    """What the actors and the gateway need from a checkpoint store.

    Times are aware UTC datetimes, kept exact to the microsecond. Methods that
    take ``now`` use it instead of the clock so that tests and sweeps agree on
    one instant; it defaults to the current time.
    """

    async def start(self) -> None:
        """Connect, check or migrate the schema version, create indexes.

        Raises:
            SchemaVersionError: the data is newer than this code.
            StoreUnavailable: the store cannot be reached.
        """

    async def stop(self) -> None:
        """Close connections; the store may be started again."""

    # Tenants

    async def put_token(
        self, token_hash: str, tenant: str, *, label: str | None = None
    ) -> None:
        """Store an API token's hash for ``tenant`` (never the token itself)."""

    async def tenant_of_token(self, token_hash: str) -> str | None:
        """Return the tenant whose token has this hash, or None."""

    # Tasks

    async def create_task(
        self, new: NewTask, documents: Documents, *, batch_size: int = DEFAULT_BATCH
    ) -> Task:
        """Create a task in ``pending`` and store its documents in batches.

        Documents are consumed batch by batch, so that a million of them are
        never in memory at once. The task is ``sealed`` once every batch is
        stored; an unsealed task is never started.

        Raises:
            DuplicateDocument: a document id was given twice; nothing of the
                task is left behind.
        """

    async def get_task(self, task_id: str, tenant: str | None = None) -> Task:
        """Return a task; with ``tenant``, only if it belongs to that tenant.

        Raises:
            TaskNotFound: no such task (for that tenant).
        """

    async def list_tasks(
        self,
        tenant: str | None = None,
        *,
        states: Iterable[TaskState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Task]:
        """Return tasks, newest first, optionally of one tenant and some states."""

    async def transition_task(
        self,
        task_id: str,
        target: TaskState,
        *,
        expected: Iterable[TaskState] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Task:
        """Move a task to ``target`` with a compare-and-set, appending history.

        The transition and its history entry are one atomic write. The state
        must be one of ``expected`` (when given) and ``target`` must follow it in
        the transition table. Entering ``pausing``, ``paused`` or ``failed``
        stores ``reason`` as the task's reason; entering ``running`` clears it.
        Timestamps (started, paused, resumed, completed, cancelled) are set here.

        Raises:
            TaskNotFound: no such task.
            TransitionRefused: the current state does not allow it.
        """

    async def record_rejection(
        self,
        task_id: str,
        target: TaskState,
        *,
        reason: str,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Transition:
        """Append a refused request to the task's history without a transition."""

    async def history(self, task_id: str, since: int = 0) -> list[Transition]:
        """Return the history entries with ``seq`` greater than ``since``."""

    async def counts(self, task_id: str) -> TaskCounts:
        """Return every document of the task counted by state.

        Costs O(1) plus the documents running or waiting to retry.
        """

    async def task_status(
        self, task_id: str, tenant: str | None = None
    ) -> tuple[Task, TaskCounts]:
        """Return a task and its counts together: what a status read needs.

        Raises:
            TaskNotFound: no such task (for that tenant).
        """

    async def recount(self, task_id: str) -> TaskCounts:
        """Rebuild the task's stored counters and token totals from its documents.

        This reads every document of the task; it repairs counters after a
        crash between a document write and its counter update. Run it on a
        quiet task: on MongoDB a settle that lands between its read and its
        write is lost from the counters (SQLite does both in one transaction).
        """

    # Documents on the work path

    async def claim(
        self,
        task_id: str,
        owner: str,
        *,
        limit: int = 1,
        doc_ids: Sequence[str] | None = None,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` claimable documents of a task to ``owner``.

        Claimable: ``pending``, or ``retry_wait`` whose ``next_attempt_at`` has
        come (those first), in document order; with ``doc_ids``, only among
        those documents (a job message's ids: the ones already completed,
        running or unknown are skipped). Each claimed document moves to
        ``running``, its attempt count grows by one, and it gets a fencing token
        greater than any it had. No document is handed to two claimers.
        """

    async def extend_leases(
        self,
        task_id: str,
        leases: Sequence[tuple[str, int]],
        *,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[str]:
        """Extend the leases ``(doc_id, fence)`` that are still current.

        Returns:
            The ids of the documents whose lease was extended; a missing id
            means the lease was lost and the work must stop.
        """

    async def settle(
        self, task_id: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[SettleResult]:
        """Write the outcomes of claimed documents, each under its fencing token.

        One result per outcome, in order: ``accepted`` (written, counters
        updated), ``duplicate`` (the same fence already wrote this state;
        nothing changes) or ``stale`` (the fence is not current; refused).
        The tokens of every attempt, whatever its outcome, go to the task's
        token totals.
        """

    async def put_result(
        self, task_id: str, doc_id: str, fence: int, result: dict[str, Any]
    ) -> str:
        """Store a document's result under a deterministic id and return the id.

        A later write of the same document replaces it. A write whose fence is
        older than the stored result's is refused.

        Raises:
            StaleFence: a newer attempt already stored a result.
        """

    async def get_result(self, task_id: str, doc_id: str) -> dict[str, Any] | None:
        """Return a document's stored result, or None."""

    async def load_contents(
        self, task_id: str, doc_ids: Sequence[str]
    ) -> dict[str, DocumentContent]:
        """Return the content (text or URI) of the given documents."""

    async def put_task_result(self, task_id: str, result: dict[str, Any]) -> None:
        """Store (replace) the task's own result: a finalize phase's checkpoint."""

    async def get_task_result(self, task_id: str) -> dict[str, Any] | None:
        """Return the task's own result, or None."""

    async def page_completed(
        self,
        task_id: str,
        *,
        after: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return completed documents in the order they finished.

        Ordered by ``(finished_at, seq)``, after the pair ``after``: a finalize
        phase keeps the last pair as its cursor, so that documents completed
        later (after a retry-failed) come after it and are merged once.
        """

    # Documents on the control path

    async def reclaim_expired(
        self, task_id: str, *, max_attempts: int, now: datetime | None = None
    ) -> ReclaimReport:
        """Release the running documents whose lease expired before ``now``.

        A document whose attempts reached ``max_attempts`` is failed instead
        (its worker died that often: a document that kills its worker must not
        block the task); the others go back to ``pending``.
        """

    async def reset_failed(
        self,
        task_id: str,
        doc_ids: Iterable[str] | None = None,
        *,
        now: datetime | None = None,
    ) -> int:
        """Move failed documents (all, or those named) back to ``pending``.

        Their attempt count starts again at zero; fencing tokens keep growing.
        Returns how many were reset.
        """

    async def cancel_open(self, task_id: str, *, now: datetime | None = None) -> int:
        """Cancel every pending or waiting document of a task; return how many."""

    def iter_open(
        self, task_id: str, *, batch_size: int = DEFAULT_BATCH
    ) -> AsyncIterator[list[str]]:
        """Yield the ids of pending and waiting documents in batches.

        Reads only those documents (by index), never the completed ones; the
        pending ones come in document order, then the waiting ones. Each comes
        once while the task is quiet; one that moves from pending to waiting
        during the walk may come twice (the callers publish jobs, and a
        duplicate job is skipped at claim time).
        """

    async def due_retries(
        self, task_id: str, *, limit: int, now: datetime | None = None
    ) -> list[str]:
        """Return ids of waiting documents whose ``next_attempt_at`` has come."""

    async def next_retry_at(self, task_id: str) -> datetime | None:
        """Return the earliest ``next_attempt_at`` of the task's waiting documents."""

    async def page_documents(
        self,
        task_id: str,
        *,
        state: DocumentState | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return checkpoints in document order after the ``seq`` ``after``."""

    async def get_document(self, task_id: str, doc_id: str) -> DocumentCheckpoint:
        """Return one document's checkpoint.

        Raises:
            DocumentNotFound: no such document in the task.
        """
