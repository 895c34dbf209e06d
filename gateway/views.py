"""Building the REST bodies of ``gateway/api.py`` from the store's records.

Everything here is computed from a task row and its counters (O(1) plus the
documents in flight), never from the task's documents.

Throughput is the documents that reached completed or failed, divided by the
seconds from ``started_at`` to the task's end, its pause, or now; the time a
task spent paused before a resume therefore lowers it. The ETA is the open
documents (pending, running, waiting to retry) at that throughput, given only
while the task runs.
"""

from __future__ import annotations

from datetime import datetime

from gateway.api import (
    AttemptView,
    DocumentView,
    FailedDocument,
    ProgressEvent,
    TaskStatus,
    TaskSummary,
    Tokens,
    TransitionEvent,
)
from store.models import (
    AttemptRecord,
    DocumentCheckpoint,
    Task,
    TaskCounts,
    TokenUsage,
    Transition,
    utcnow,
)
from store.states import TaskState

T = TaskState
PAUSABLE = (T.PENDING, T.RUNNING, T.FINALIZING)


def tokens_of(usage: TokenUsage) -> Tokens:
    """Return the API view of a token usage."""
    return Tokens(prompt=usage.prompt, completion=usage.completion, total=usage.total)


def progress_of(task: Task, finished: int) -> float:
    """Return ``finished / total`` in [0, 1] (0 for an empty task)."""
    if task.total_documents <= 0:
        return 0.0
    return min(1.0, finished / task.total_documents)


def pace(task: Task, counts: TaskCounts, now: datetime) -> tuple[float | None, ...]:
    """Return the throughput (documents per second) and the ETA in seconds."""
    if task.started_at is None:
        return None, None
    end = task.completed_at or task.cancelled_at or now
    if task.state in (T.PAUSING, T.PAUSED) and task.paused_at is not None:
        end = task.paused_at
    seconds = (end - task.started_at).total_seconds()
    done = counts.completed + counts.failed
    if seconds <= 0 or done == 0:
        return None, None
    throughput = done / seconds
    eta = counts.open / throughput if task.state is T.RUNNING else None
    return throughput, eta


def tokens_to_spend(task: Task, counts: TaskCounts) -> int | None:
    """Estimate the tokens the open documents will spend, at the pace so far.

    The tokens spent (failed attempts included) per document that reached an
    outcome, times the documents still open; None before any outcome.
    """
    settled = counts.completed + counts.failed
    if not settled:
        return None
    return round(task.tokens.total / settled * counts.open)


def task_status(
    task: Task,
    counts: TaskCounts,
    failed: list[DocumentCheckpoint],
    limit: int,
    *,
    estimated: bool = False,
) -> TaskStatus:
    """Return a task's detailed status from its row, counters and failed page."""
    throughput, eta = pace(task, counts, utcnow())
    finished = counts.completed + counts.failed + counts.cancelled
    # Built from validated store models: construct without validating again
    # (this is the hot read of the API).
    return TaskStatus.model_construct(
        task_id=task.task_id,
        type=task.type,
        state=task.state,
        progress=progress_of(task, finished),
        total_documents=counts.total,
        completed_documents=counts.completed,
        failed_documents=counts.failed,
        pending_documents=counts.pending,
        running_documents=counts.running,
        retry_wait_documents=counts.retry_wait,
        cancelled_documents=counts.cancelled,
        token_count=tokens_of(task.tokens),
        tokens_estimated=estimated,
        tokens_to_spend=tokens_to_spend(task, counts),
        token_budget=task.config.token_budget,
        created_at=task.created_at,
        started_at=task.started_at,
        paused_at=task.paused_at,
        resumed_at=task.resumed_at,
        completed_at=task.completed_at,
        cancelled_at=task.cancelled_at,
        throughput=throughput,
        eta_seconds=eta,
        can_pause=task.config.use_checkpoints and task.state in PAUSABLE,
        reason=task.reason,
        failed=[
            FailedDocument(doc_id=d.doc_id, attempts=d.attempts, error=d.error)
            for d in failed
        ],
        failed_next=failed[-1].seq if failed and len(failed) == limit else None,
    )


def progress_event(task: Task, counts: TaskCounts) -> ProgressEvent:
    """Return the ``progress`` event of a task's counters."""
    status = task_status(task, counts, [], 1)
    return ProgressEvent.model_validate(
        status.model_dump(include=set(ProgressEvent.model_fields))
    )


def task_summary(task: Task) -> TaskSummary:
    """Return a task in a list, from its row alone."""
    settled = task.settled
    finished = settled.completed + settled.failed + settled.cancelled
    return TaskSummary(
        task_id=task.task_id,
        type=task.type,
        state=task.state,
        progress=progress_of(task, finished),
        total_documents=task.total_documents,
        completed_documents=settled.completed,
        failed_documents=settled.failed,
        token_count=tokens_of(task.tokens),
        created_at=task.created_at,
    )


def attempt_view(record: AttemptRecord) -> AttemptView:
    """Return one attempt at a document."""
    return AttemptView(
        attempt=record.attempt,
        outcome=record.outcome,
        started_at=record.started_at,
        finished_at=record.finished_at,
        tokens=tokens_of(record.tokens),
        error=record.error,
    )


def document_view(doc: DocumentCheckpoint) -> DocumentView:
    """Return one document's checkpoint as the API shows it."""
    return DocumentView(
        doc_id=doc.doc_id,
        seq=doc.seq,
        state=doc.state,
        attempts=doc.attempts,
        error=doc.error,
        token_count=tokens_of(doc.tokens),
        next_attempt_at=doc.next_attempt_at,
        started_at=doc.started_at,
        finished_at=doc.finished_at,
        has_result=doc.result_ref is not None,
        attempt_log=[attempt_view(a) for a in doc.attempt_log],
    )


def transition_event(entry: Transition) -> TransitionEvent:
    """Return one history entry as an event."""
    return TransitionEvent.model_validate(entry.model_dump())
