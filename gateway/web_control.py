"""Handlers of the control requests: pause, resume, cancel, retry-failed.

The gateway never changes a task's state itself. It decides whether the
request can apply with the supervisor's own rules (``actors/control.py``),
run against a :class:`Rehearsal` of the store that refuses for real but
transitions nothing; it answers 409 for a refusal (recorded in the task's
history, so the events stream shows it), and otherwise publishes the control
message with a publisher confirm and answers 202. The supervisor that
consumes the message applies it with a compare-and-set; if the task moved
meanwhile, that supervisor records the refusal in the history instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from actors.control import apply_control
from actors.errors import BrokerError
from actors.messages import ControlAction, ControlMessage
from gateway.api import ApiError, ControlAccepted, RetryFailed
from gateway.context import REQUEST_ID, context_of
from gateway.intake import invalid
from gateway.responses import json_response
from gateway.web_tasks import load_task
from store.base import CheckpointStore
from store.errors import DocumentNotFound
from store.models import DocumentCheckpoint, Task
from store.states import DocumentState, TaskState

logger = logging.getLogger(__name__)

# Named documents that a rehearsed retry-failed looks at before it lets the
# supervisor decide about the rest.
RETRY_PROBE = 100


class Rehearsal:
    """The store as ``actors.control`` sees it, minus every transition.

    Reads and ``record_rejection`` go to the real store; ``transition_task``
    and ``reset_failed`` only say whether they would do something, reading
    at most one page of failed documents or :data:`RETRY_PROBE` named ones.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def transition_task(self, task_id: str, target: TaskState, **_: Any) -> Task:
        """Return the task unchanged: the supervisor makes the transition."""
        return await self._store.get_task(task_id)

    async def page_documents(
        self,
        task_id: str,
        *,
        state: DocumentState | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return one failed document at most: enough to know there are some."""
        if after != -1:
            return []
        return await self._store.page_documents(task_id, state=state, limit=1)

    async def reset_failed(
        self, task_id: str, doc_ids: Iterable[str] | None = None, **_: Any
    ) -> int:
        """Return 1 if some named document (or any, unnamed) failed, else 0."""
        names = list(doc_ids or ())
        for doc_id in names[:RETRY_PROBE]:
            try:
                doc = await self._store.get_document(task_id, doc_id)
            except DocumentNotFound:
                continue
            if doc.state is DocumentState.FAILED:
                return 1
        return 1 if len(names) > RETRY_PROBE else 0


async def refusal(store: CheckpointStore, msg: ControlMessage) -> str | None:
    """Return why ``msg`` cannot apply now (recorded in history), or None."""
    applied = await apply_control(cast(CheckpointStore, Rehearsal(store)), msg)
    return applied.refused


def control_handler(action: ControlAction) -> Handler:
    """Return the handler of one control action."""

    async def handle(request: web.Request) -> web.Response:
        return await control(request, action)

    handle.__name__ = f"control_{action.value.replace('-', '_')}"
    handle.__doc__ = f"``POST .../{action}``: request {action}."
    return handle


async def control(request: web.Request, action: ControlAction) -> web.Response:
    """Decide, publish and answer one control request."""
    ctx = context_of(request)
    task = await load_task(request)
    msg = ControlMessage(
        task_id=task.task_id,
        action=action,
        doc_ids=await retry_ids(request)
        if action is ControlAction.RETRY_FAILED
        else None,
        request_id=request[REQUEST_ID],
    )
    why = await refusal(ctx.store, msg)
    if why is not None:
        ctx.metrics.control(str(action), "refused")
        ctx.hub.notify(task.task_id)
        raise ApiError(409, "transition_refused", f"{action} refused: {why}")
    await publish(request, msg)
    return json_response(
        ControlAccepted(
            request_id=str(msg.request_id),
            task_id=task.task_id,
            action=str(action),
            state=task.state,
        ),
        202,
    )


async def retry_ids(request: web.Request) -> tuple[str, ...] | None:
    """Return the ``doc_ids`` of a retry-failed body; an empty body means all."""
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        body = RetryFailed.model_validate_json(raw)
    except ValidationError as err:
        raise invalid(err) from err
    return None if body.doc_ids is None else tuple(body.doc_ids)


async def publish(request: web.Request, msg: ControlMessage) -> None:
    """Publish with a confirm within the timeout, or raise a 503.

    A publish that timed out may still reach the queue later; applying a
    control request twice is harmless, and the 503 tells the client to ask
    again.
    """
    ctx = context_of(request)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(ctx.publish_timeout):
            await ctx.broker.publish_control(msg.model_dump_json().encode())
    except (BrokerError, TimeoutError) as err:
        ctx.metrics.control(str(msg.action), "unavailable")
        logger.warning(
            "control not published task_id=%s action=%s: %r",
            msg.task_id,
            msg.action,
            err,
        )
        raise ApiError(
            503,
            "broker_unavailable",
            "the control request could not be queued; nothing changed, try again",
            headers={"Retry-After": "5"},
        ) from err
    ctx.metrics.control(str(msg.action), "accepted", time.perf_counter() - started)
    logger.info(
        "control published task_id=%s action=%s request_id=%s",
        msg.task_id,
        msg.action,
        msg.request_id,
    )
