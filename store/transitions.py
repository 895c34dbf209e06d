"""What a task transition writes besides the new state, for both stores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from store.models import Task
from store.states import TaskState

T = TaskState
# Entering one of these records the reason on the task: a system pause says
# why (token budget, failing provider), a failure says what gave up.
REASON_STATES = frozenset({T.PAUSING, T.PAUSED, T.FAILED})
DONE_STATES = frozenset({T.COMPLETED, T.COMPLETED_WITH_FAILURES, T.FAILED})


def transition_fields(
    task: Task, target: TaskState, reason: str | None, now: datetime
) -> dict[str, Any]:
    """Return the task fields that moving ``task`` to ``target`` sets.

    The timestamps: ``started_at`` on the first start, ``resumed_at`` when a
    paused task runs again, ``paused_at``, ``completed_at`` (also for the
    failure states) and ``cancelled_at``. The reason is kept on pausing, paused
    and failed, cleared when the task runs again.
    """
    fields: dict[str, Any] = {}
    if target is T.RUNNING:
        fields["reason"] = None
        if task.started_at is None:
            fields["started_at"] = now
        if task.state in (T.PAUSED, T.PAUSING):
            fields["resumed_at"] = now
    elif target in REASON_STATES and reason is not None:
        fields["reason"] = reason
    if target is T.PAUSED:
        fields["paused_at"] = now
    elif target in DONE_STATES:
        fields["completed_at"] = now
    elif target is T.CANCELLED:
        fields["cancelled_at"] = now
    return fields
