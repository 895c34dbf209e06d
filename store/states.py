"""The states of tasks and documents, and the one table of allowed transitions.

Everything that changes a state asks this module first, so that the store, the
supervisor and the gateway cannot disagree about what may follow what.
"""

from __future__ import annotations

from enum import StrEnum

from store.errors import TransitionRefused


class TaskState(StrEnum):
    """The lifecycle of a task."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"


class DocumentState(StrEnum):
    """The lifecycle of one document of a task."""

    PENDING = "pending"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


T = TaskState
D = DocumentState

# Cancelling is reachable from every state that is not final; final states only
# leave through retry-failed (back to running).
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    T.PENDING: frozenset({T.RUNNING, T.PAUSING, T.CANCELLING, T.FAILED}),
    T.RUNNING: frozenset(
        {
            T.PAUSING,
            T.FINALIZING,
            T.CANCELLING,
            T.COMPLETED,
            T.COMPLETED_WITH_FAILURES,
            T.FAILED,
        }
    ),
    T.PAUSING: frozenset({T.PAUSED, T.RUNNING, T.CANCELLING}),
    T.PAUSED: frozenset({T.RUNNING, T.CANCELLING}),
    T.FINALIZING: frozenset(
        {T.PAUSING, T.CANCELLING, T.COMPLETED, T.COMPLETED_WITH_FAILURES, T.FAILED}
    ),
    T.CANCELLING: frozenset({T.CANCELLED}),
    T.CANCELLED: frozenset(),
    T.COMPLETED: frozenset(),
    T.COMPLETED_WITH_FAILURES: frozenset({T.RUNNING}),
    T.FAILED: frozenset({T.RUNNING}),
}

DOCUMENT_TRANSITIONS: dict[DocumentState, frozenset[DocumentState]] = {
    D.PENDING: frozenset({D.RUNNING, D.CANCELLED}),
    # running -> pending is an interrupted attempt: a released or expired lease.
    D.RUNNING: frozenset({D.COMPLETED, D.FAILED, D.RETRY_WAIT, D.CANCELLED, D.PENDING}),
    D.RETRY_WAIT: frozenset({D.RUNNING, D.PENDING, D.CANCELLED}),
    D.COMPLETED: frozenset(),
    D.FAILED: frozenset({D.PENDING}),
    D.CANCELLED: frozenset(),
}

FINAL_TASK_STATES = frozenset(
    {T.CANCELLED, T.COMPLETED, T.COMPLETED_WITH_FAILURES, T.FAILED}
)
SETTLED_DOCUMENT_STATES = frozenset({D.COMPLETED, D.FAILED, D.CANCELLED})
# The settle operation moves a running document into one of these.
SETTLE_TARGETS = frozenset(
    {D.COMPLETED, D.FAILED, D.RETRY_WAIT, D.CANCELLED, D.PENDING}
)


def task_sources(target: TaskState) -> frozenset[TaskState]:
    """Return the task states from which ``target`` may be entered."""
    return frozenset(s for s, nxt in TASK_TRANSITIONS.items() if target in nxt)


def check_task_transition(task_id: str, current: TaskState, target: TaskState) -> None:
    """Raise :class:`TransitionRefused` unless ``current -> target`` is allowed."""
    if target not in TASK_TRANSITIONS[current]:
        raise TransitionRefused(task_id, current, target)


def is_final(state: TaskState) -> bool:
    """Tell whether a task in ``state`` can no longer be cancelled."""
    return state in FINAL_TASK_STATES
