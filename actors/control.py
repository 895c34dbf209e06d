"""Applying a control request to a task in the store.

One function per action decides, from the task's current state, whether the
request becomes a transition (a compare-and-set in the store, with its history
entry), is already satisfied, or is refused with a reason that goes to the
task's history. The supervisor broadcasts what was applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from actors.messages import ControlAction, ControlMessage
from store.base import CheckpointStore
from store.errors import TransitionRefused
from store.models import Task
from store.states import DocumentState, TaskState, is_final

logger = logging.getLogger(__name__)

T = TaskState
LEGACY = (
    "the task runs all-or-nothing (use_checkpoints: false) and cannot pause or resume"
)


@dataclass(frozen=True)
class Applied:
    """The outcome of one control request."""

    task: Task
    changed: bool
    refused: str | None = None
    reset: tuple[str, ...] = ()


async def apply_control(store: CheckpointStore, msg: ControlMessage) -> Applied:
    """Apply ``msg`` to its task and return what came of it.

    Raises:
        TaskNotFound: the message names no task.
    """
    task = await store.get_task(msg.task_id)
    try:
        if msg.action is ControlAction.PAUSE:
            return await pause(store, task, msg)
        if msg.action is ControlAction.RESUME:
            return await resume(store, task, msg)
        if msg.action is ControlAction.CANCEL:
            return await cancel(store, task, msg)
        return await retry_failed(store, task, msg)
    except TransitionRefused as err:
        # The state moved between our read and the compare-and-set.
        return await refuse(store, task, msg, err.why)


async def refuse(
    store: CheckpointStore, task: Task, msg: ControlMessage, why: str
) -> Applied:
    """Record a refused request in the task's history."""
    target = TARGETS[msg.action]
    await store.record_rejection(
        task.task_id,
        target,
        reason=f"{msg.action} refused: {why}",
        request_id=msg.request_id,
    )
    logger.warning(
        "control refused task_id=%s action=%s state=%s request_id=%s: %s",
        task.task_id,
        msg.action,
        task.state,
        msg.request_id,
        why,
    )
    return Applied(task, changed=False, refused=why)


async def move(
    store: CheckpointStore, task: Task, target: TaskState, msg: ControlMessage, why: str
) -> Applied:
    """Make one transition with a compare-and-set on the state just read."""
    moved = await store.transition_task(
        task.task_id,
        target,
        expected=[task.state],
        reason=why,
        request_id=msg.request_id,
    )
    return Applied(moved, changed=True)


async def pause(store: CheckpointStore, task: Task, msg: ControlMessage) -> Applied:
    """Pause a pending, running or finalizing task; a repeated pause is satisfied."""
    if not task.config.use_checkpoints:
        return await refuse(store, task, msg, LEGACY)
    if task.state in (T.PAUSING, T.PAUSED):
        return Applied(task, changed=False)
    if task.state not in (T.PENDING, T.RUNNING, T.FINALIZING):
        return await refuse(store, task, msg, f"a {task.state} task cannot pause")
    return await move(store, task, T.PAUSING, msg, "paused by request")


async def resume(store: CheckpointStore, task: Task, msg: ControlMessage) -> Applied:
    """Resume a paused or pausing task; resuming a running task is satisfied."""
    if not task.config.use_checkpoints:
        return await refuse(store, task, msg, LEGACY)
    if task.state is T.RUNNING:
        return Applied(task, changed=False)
    if task.state not in (T.PAUSING, T.PAUSED):
        return await refuse(store, task, msg, f"a {task.state} task cannot resume")
    return await move(store, task, T.RUNNING, msg, "resumed by request")


async def cancel(store: CheckpointStore, task: Task, msg: ControlMessage) -> Applied:
    """Cancel a task that has not ended; a repeated cancel is satisfied."""
    if task.state is T.CANCELLING:
        return Applied(task, changed=False)
    if is_final(task.state):
        return await refuse(
            store, task, msg, f"a {task.state} task cannot be cancelled"
        )
    return await move(store, task, T.CANCELLING, msg, "cancelled by request")


async def retry_failed(
    store: CheckpointStore, task: Task, msg: ControlMessage
) -> Applied:
    """Give failed documents (all, or those named) a fresh attempt budget.

    A task that had ended with failures runs again; a running or paused task
    keeps its state and picks the documents up when it runs.
    """
    if task.state in (T.CANCELLING, T.CANCELLED, T.COMPLETED):
        return await refuse(
            store, task, msg, f"a {task.state} task has nothing to retry"
        )
    names = msg.doc_ids or await failed_ids(store, task.task_id)
    reset = await store.reset_failed(task.task_id, names)
    if reset == 0:
        why = (
            "none of the named documents failed"
            if msg.doc_ids
            else "no document failed"
        )
        return await refuse(store, task, msg, why)
    ids = tuple(names)
    if task.state in (T.COMPLETED_WITH_FAILURES, T.FAILED):
        applied = await move(
            store, task, T.RUNNING, msg, f"retrying {reset} failed documents"
        )
        return Applied(applied.task, changed=True, reset=ids)
    return Applied(await store.get_task(task.task_id), changed=True, reset=ids)


async def failed_ids(store: CheckpointStore, task_id: str) -> list[str]:
    """Return the ids of a task's failed documents (reads only those)."""
    ids: list[str] = []
    after = -1
    while page := await store.page_documents(
        task_id, state=DocumentState.FAILED, after=after, limit=1000
    ):
        ids.extend(d.doc_id for d in page)
        after = page[-1].seq
    return ids


TARGETS = {
    ControlAction.PAUSE: T.PAUSING,
    ControlAction.RESUME: T.RUNNING,
    ControlAction.CANCEL: T.CANCELLING,
    ControlAction.RETRY_FAILED: T.RUNNING,
}
