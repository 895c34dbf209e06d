"""The in-process broker: the embedded default, with RabbitMQ's semantics.

Everything lives in this process and is lost when it exits; the checkpoint
store stays the truth, and a supervisor reconciles queued work against it on
start. Within one process the broker keeps the contract of
:mod:`actors.broker`: FIFO queues, a prefetch bound per consumer, manual
acks, redelivery with ``redelivered`` set, round-robin across the consumers of
one queue, a dead-letter queue and a broadcast to every subscriber.

Each delivery runs its handler in a task of its own, as aio-pika does, so a
consumer with ``prefetch=n`` handles up to ``n`` messages at once; handlers
start in queue order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from actors.broker import (
    DEFAULT_PREFIX,
    REASON_HEADER,
    Delivery,
    Handler,
    run_handler,
)
from actors.errors import BrokerError

log = logging.getLogger(__name__)

# Broadcasts are handled one at a time so that a subscriber applies control
# transitions in the order they were broadcast (pause before resume).
BROADCAST_PREFETCH = 1


@dataclass
class _Message:
    body: bytes
    headers: Mapping[str, Any]
    seq: int
    redelivered: bool = False


@dataclass(eq=False)
class _Queue:
    """A FIFO of ready messages and the consumers that share it."""

    name: str
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[MemorySubscription] = field(default_factory=list)
    next_consumer: int = 0

    def requeue(self, messages: Sequence[_Message]) -> None:
        """Put messages back at the front, in their original order, flagged."""
        for message in sorted(messages, key=lambda m: m.seq, reverse=True):
            message.redelivered = True
            self.ready.appendleft(message)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, in round-robin order."""
        while self.ready:
            consumer = self._next_with_room()
            if consumer is None:
                return
            consumer.deliver(self.ready.popleft())

    def _next_with_room(self) -> MemorySubscription | None:
        count = len(self.consumers)
        for offset in range(count):
            index = (self.next_consumer + offset) % count
            consumer = self.consumers[index]
            if consumer.has_room():
                self.next_consumer = (index + 1) % count
                return consumer
        return None


class MemoryDelivery:
    """A message handed to one :class:`MemorySubscription`, settled once.

    Settling twice, or after the subscription was cancelled (its unacked
    messages are then already back in the queue), raises :class:`BrokerError`:
    the same mistakes cost a channel error on RabbitMQ.
    """

    def __init__(self, subscription: MemorySubscription, tag: int, message: _Message):
        self._subscription = subscription
        self._tag = tag
        self._message = message
        # Read now: the message's own flag changes if it is requeued later.
        self._redelivered = message.redelivered

    @property
    def body(self) -> bytes:
        """The message's payload."""
        return self._message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers (empty when it has none)."""
        return self._message.headers

    @property
    def redelivered(self) -> bool:
        """Whether this message was delivered before."""
        return self._redelivered

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        self._subscription.settle(self._tag, requeue=False)

    async def nack(self, *, requeue: bool = True) -> None:
        """Refuse: back to the front of its queue, or dropped."""
        self._subscription.settle(self._tag, requeue=requeue)


class MemorySubscription:
    """One consumer of one queue, with at most ``prefetch`` unacked messages."""

    def __init__(
        self, broker: MemoryBroker, queue: _Queue, handler: Handler, prefetch: int
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch!r}")
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._tags = itertools.count(1)
        self._unacked: dict[int, _Message] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.cancelled = False

    @property
    def queue_name(self) -> str:
        """The name of the queue this subscription consumes."""
        return self._queue.name

    def has_room(self) -> bool:
        """Whether the prefetch bound allows another delivery."""
        return not self.cancelled and len(self._unacked) < self._prefetch

    def deliver(self, message: _Message) -> None:
        """Record ``message`` as unacked and run the handler on it."""
        tag = next(self._tags)
        self._unacked[tag] = message
        delivery = MemoryDelivery(self, tag, message)
        task = asyncio.get_running_loop().create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, tag: int, *, requeue: bool) -> None:
        """Ack (``requeue=False`` drops) or requeue one delivery, exactly once."""
        message = self._unacked.pop(tag, None)
        if message is None:
            raise BrokerError(
                f"delivery {tag!r} of queue {self._queue.name!r} is already "
                "settled, or was requeued when its subscription was cancelled"
            )
        if requeue:
            self._queue.requeue([message])
        else:
            self._queue.dispatch()

    async def cancel(self) -> None:
        """Stop consuming; unacked messages go back to the queue's front.

        Handlers still running are left to finish; settling their delivery
        afterwards raises :class:`BrokerError`, since the message is already
        back in the queue (RabbitMQ closes the consumer's channel likewise).
        """
        self.detach(requeue=True)

    def detach(self, *, requeue: bool) -> None:
        """Leave the queue, requeueing (or, for a deleted queue, dropping)
        what this subscription held."""
        if self.cancelled:
            return
        self.cancelled = True
        self._queue.consumers.remove(self)
        self._queue.next_consumer = 0
        self._broker.forget(self)
        held = list(self._unacked.values())
        self._unacked.clear()
        if requeue and held:
            self._queue.requeue(held)
        else:
            self._queue.dispatch()

    async def abort_handlers(self) -> None:
        """Cancel handlers still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, delivery: Delivery) -> None:
        await run_handler(self._handler, delivery, self._queue.name)


class MemoryBroker:
    """An in-process broker with the topology and semantics of ``Broker``.

    Queues survive :meth:`stop` and a later :meth:`start` (as durable queues
    survive a RabbitMQ restart), but not the process.

    Args:
        prefix: The prefix of every queue name.
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._prefix = prefix
        self._queues: dict[str, _Queue] = {}
        self._broadcast_queues: set[_Queue] = set()
        self._subscriptions: set[MemorySubscription] = set()
        self._seq = itertools.count()
        self._broadcast_names = itertools.count(1)
        self._started = False
        self.control_queue = f"{prefix}.control"
        self.dead_letter_queue = f"{prefix}.control.dead"

    async def start(self) -> None:
        """Declare the shared topology; nothing to connect to."""
        self._queue(self.control_queue)
        self._queue(self.dead_letter_queue)
        self._started = True
        log.info("memory broker started, prefix=%s", self._prefix)

    async def stop(self) -> None:
        """Cancel every consumer, requeue what it held, end its handlers."""
        self._started = False
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            await subscription.cancel()
        for subscription in subscriptions:
            await subscription.abort_handlers()
        log.info("memory broker stopped, prefix=%s", self._prefix)

    async def ping(self) -> bool:
        """Tell whether the broker is started."""
        return self._started

    def job_queue_name(self, task_id: str) -> str:
        """Return the name of the task's job queue."""
        return f"{self._prefix}.task.{task_id}"

    async def publish_jobs(self, task_id: str, bodies: Sequence[bytes]) -> None:
        """Append job messages to the task's queue, creating it when missing."""
        self._check_started()
        self._publish(self._queue(self.job_queue_name(task_id)), bodies)

    async def consume_jobs(
        self, task_id: str, handler: Handler, *, prefetch: int
    ) -> MemorySubscription:
        """Consume the task's queue with at most ``prefetch`` unacked messages."""
        return self._subscribe(self.job_queue_name(task_id), handler, prefetch)

    async def purge_jobs(self, task_id: str) -> int:
        """Drop every ready message of the task's queue; return how many."""
        self._check_started()
        queue = self._queue(self.job_queue_name(task_id))
        count = len(queue.ready)
        queue.ready.clear()
        return count

    async def delete_jobs(self, task_id: str) -> None:
        """Delete the task's queue; its consumers end and unacked are dropped."""
        self._check_started()
        queue = self._queues.pop(self.job_queue_name(task_id), None)
        if queue is None:
            return
        for subscription in list(queue.consumers):
            subscription.detach(requeue=False)

    async def job_depth(self, task_id: str) -> int:
        """Return how many ready messages wait in the task's queue."""
        self._check_started()
        return len(self._queue(self.job_queue_name(task_id)).ready)

    async def publish_control(self, body: bytes) -> None:
        """Append a control message to the control queue."""
        self._check_started()
        self._publish(self._queue(self.control_queue), [body])

    async def consume_control(
        self, handler: Handler, *, prefetch: int
    ) -> MemorySubscription:
        """Consume the shared control queue."""
        return self._subscribe(self.control_queue, handler, prefetch)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy the message to the dead-letter queue with ``reason``, then ack.

        The copy is in the dead-letter queue before the ack is sent, so a
        failing ack leaves a duplicate, never a loss.
        """
        self._check_started()
        headers = {**delivery.headers, REASON_HEADER: reason}
        self._publish(self._queue(self.dead_letter_queue), [delivery.body], headers)
        await delivery.ack()
        log.debug("dead-lettered a control message: %s", reason)

    def dead_letters(self) -> list[tuple[bytes, str]]:
        """Return the dead-lettered messages with their reasons, oldest first."""
        queue = self._queue(self.dead_letter_queue)
        return [(m.body, str(m.headers.get(REASON_HEADER))) for m in queue.ready]

    def queue_names(self) -> list[str]:
        """Return the names of the queues that exist now, for inspection."""
        return sorted(self._queues)

    async def broadcast(self, body: bytes) -> None:
        """Deliver ``body`` to every broadcast subscriber's own queue."""
        self._check_started()
        for queue in list(self._broadcast_queues):
            self._publish(queue, [body])

    async def consume_broadcasts(self, handler: Handler) -> MemorySubscription:
        """Hear broadcasts on a queue of this subscriber's own, in order.

        The queue goes away with the subscription (RabbitMQ's auto-delete).
        """
        self._check_started()
        name = f"{self._prefix}.broadcast.{next(self._broadcast_names)}"
        queue = _Queue(name)
        self._broadcast_queues.add(queue)
        return self._attach(queue, handler, BROADCAST_PREFETCH)

    def forget(self, subscription: MemorySubscription) -> None:
        """Drop a cancelled subscription; an emptied broadcast queue goes too."""
        self._subscriptions.discard(subscription)
        queue = subscription._queue
        if queue in self._broadcast_queues and not queue.consumers:
            self._broadcast_queues.discard(queue)

    def _subscribe(
        self, name: str, handler: Handler, prefetch: int
    ) -> MemorySubscription:
        self._check_started()
        return self._attach(self._queue(name), handler, prefetch)

    def _attach(
        self, queue: _Queue, handler: Handler, prefetch: int
    ) -> MemorySubscription:
        subscription = MemorySubscription(self, queue, handler, prefetch)
        queue.consumers.append(subscription)
        self._subscriptions.add(subscription)
        queue.dispatch()
        return subscription

    def _publish(
        self,
        queue: _Queue,
        bodies: Sequence[bytes],
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        frozen = MappingProxyType(dict(headers or {}))
        for body in bodies:
            queue.ready.append(_Message(bytes(body), frozen, next(self._seq)))
        queue.dispatch()

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name)
        return queue

    def _check_started(self) -> None:
        if not self._started:
            raise BrokerError(f"memory broker {self._prefix!r} is not started")
