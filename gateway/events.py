"""Live events: the task's history replayed, then transitions and progress.

One broadcast subscription serves the whole application: the hub hears every
supervisor's "task X changed" broadcast and wakes the streams that watch X.
A woken stream reads the history after the last entry it sent (an indexed
range read), so a stream never reads the whole task. Between broadcasts each
stream ticks about once a second: it reads the task row and its counters
(O(1) plus the documents in flight) for a ``progress`` event, and reads the
history whenever the row's version moved (transitions nobody broadcast:
refusals recorded by a supervisor, or broadcasts lost in a broker outage).

An event's id is its history ``seq``; a client that reconnects with
``Last-Event-ID`` (or ``?since=``) gets what it missed. The stream ends after
the task's final transition, or when the client goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict

from aiohttp import web
from pydantic import BaseModel

from actors.broker import Broker, Delivery, Subscription
from actors.errors import BrokerError
from gateway.context import REQUEST_ID, context_of
from gateway.responses import json_response
from gateway.views import progress_event, transition_event
from gateway.web_tasks import int_query, load_task, tenant_task
from store.base import CheckpointStore
from store.models import Task
from store.states import is_final

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class EventHub:
    """Fans the broker's broadcasts out to the streams of this process."""

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscription: Subscription | None = None
        self.closing = asyncio.Event()

    async def start(self, broker: Broker) -> None:
        """Subscribe to broadcasts (one queue for this application)."""
        self._subscription = await broker.consume_broadcasts(self._on_broadcast)

    async def stop(self) -> None:
        """Stop listening and end every stream."""
        self.closing.set()
        self.notify_all()
        if self._subscription is not None:
            with contextlib.suppress(BrokerError):
                await self._subscription.cancel()
            self._subscription = None

    def watch(self, task_id: str) -> asyncio.Event:
        """Return an event that is set whenever the task may have changed."""
        wake = asyncio.Event()
        self._watchers[task_id].add(wake)
        return wake

    def unwatch(self, task_id: str, wake: asyncio.Event) -> None:
        """Forget a stream's event."""
        watchers = self._watchers.get(task_id)
        if watchers is not None:
            watchers.discard(wake)
            if not watchers:
                del self._watchers[task_id]

    def notify(self, task_id: str) -> None:
        """Wake the streams of one task."""
        for wake in self._watchers.get(task_id, ()):
            wake.set()

    def notify_all(self) -> None:
        """Wake every stream."""
        for watchers in self._watchers.values():
            for wake in watchers:
                wake.set()

    async def _on_broadcast(self, delivery: Delivery) -> None:
        try:
            task_id = json.loads(delivery.body)["task_id"]
        except (ValueError, KeyError, TypeError):
            logger.debug("broadcast without a task id: %r", delivery.body[:200])
        else:
            self.notify(str(task_id))
        await delivery.ack()


def sse(event: str, body: BaseModel, event_id: int | None = None) -> bytes:
    """Return one Server-Sent Event."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body.model_dump_json()}\n\n".encode()


class TaskStream:
    """One client's event stream of one task."""

    def __init__(
        self, store: CheckpointStore, hub: EventHub, task: Task, since: int
    ) -> None:
        self.store = store
        self.hub = hub
        self.task = task
        self.last = since

    async def run(self, response: web.StreamResponse) -> None:
        """Replay, then follow the task until it ends or the client goes."""
        wake = self.hub.watch(self.task.task_id)
        try:
            while not self.hub.closing.is_set():
                await self._send_history(response)
                if is_final(self.task.state) and self.last >= self.task.version:
                    return
                counts = await self.store.counts(self.task.task_id)
                await response.write(sse("progress", progress_event(self.task, counts)))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.hub.tick):
                        await wake.wait()
                wake.clear()
                self.task = await self.store.get_task(self.task.task_id)
        finally:
            self.hub.unwatch(self.task.task_id, wake)

    async def _send_history(self, response: web.StreamResponse) -> None:
        if self.task.version <= self.last:
            return
        for entry in await self.store.history(self.task.task_id, since=self.last):
            await response.write(sse("transition", transition_event(entry), entry.seq))
            self.last = entry.seq


async def events(request: web.Request) -> web.StreamResponse:
    """``GET .../events``: the task's history from ``since``, then live events."""
    ctx = context_of(request)
    ticket = request.query.get("ticket")
    if ticket is not None:
        tenant = ctx.auth.redeem(request, ticket, request.match_info["task_id"])
    else:
        tenant = await ctx.auth.tenant(request)
    task = await tenant_task(request, tenant)
    since = since_of(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-Id": request[REQUEST_ID],
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        await TaskStream(ctx.store, ctx.hub, task, since).run(response)
    return response


def since_of(request: web.Request) -> int:
    """Return the last seq the client has: ``since``, or ``Last-Event-ID``."""
    header = request.headers.get("Last-Event-ID")
    if "since" not in request.query and header is not None and header.isdigit():
        return int(header)
    return int_query(request, "since", 0, 0, 2**62)


async def ticket(request: web.Request) -> web.Response:
    """``POST .../events/ticket``: a single-use ticket for a browser's stream."""
    ctx = context_of(request)
    task = await load_task(request)
    return json_response(ctx.auth.issue(task.tenant, task.task_id), 201)
