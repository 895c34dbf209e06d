"""The broker interface: what the supervisor needs from a message broker.

Two implementations keep these semantics: RabbitMQ through aio-pika
(``actors/broker_rabbitmq.py``) for distributed runs, and an in-process broker
(``actors/broker_memory.py``) for the embedded default.

Topology, every name under a prefix (``taskpoint`` unless given):

- ``{prefix}.control``: one durable queue of control messages that any
  supervisor may consume; operators may publish to it by hand.
- ``{prefix}.control.dead``: malformed control messages, each with the reason
  in the ``x-taskpoint-reason`` header.
- ``{prefix}.task.{task_id}``: one durable queue of document jobs per task, so
  that pausing a task is cancelling its consumers while its jobs stay queued,
  and one huge task cannot starve the others.
- ``{prefix}.broadcast``: a fanout exchange; every supervisor binds an
  exclusive queue to it and hears every applied control transition at once.

Delivery semantics, the same in both: messages are persistent and publishing
returns only once the broker has confirmed them; consumers ack by hand; a
message nacked with requeue, or unacked when its consumer or connection goes
away, is delivered again with ``redelivered`` set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from actors.errors import BrokerError

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "taskpoint"
REASON_HEADER = "x-taskpoint-reason"


@runtime_checkable
class Delivery(Protocol):
    """One message handed to a consumer, to be settled exactly once."""

    @property
    def body(self) -> bytes:
        """The message's payload."""

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers (empty when it has none)."""

    @property
    def redelivered(self) -> bool:
        """Whether the broker delivered this message before."""

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""

    async def nack(self, *, requeue: bool = True) -> None:
        """Refuse: the message goes back to its queue, or is dropped."""


Handler = Callable[[Delivery], Awaitable[None]]


async def run_handler(handler: Handler, delivery: Delivery, queue: str) -> None:
    """Run a consumer's handler on one delivery, for both brokers.

    An error that escapes the handler leaves the delivery unsettled: it is
    requeued (as aio-pika's ``process(requeue=True)`` would) rather than hold
    a prefetch slot until the subscription ends.
    """
    try:
        await handler(delivery)
    except Exception:
        logger.exception("handler failed on queue %s", queue)
        with contextlib.suppress(BrokerError):
            await delivery.nack(requeue=True)


@runtime_checkable
class Subscription(Protocol):
    """A running consumer; cancelling it stops deliveries to its handler."""

    async def cancel(self) -> None:
        """Stop consuming; unacked messages of this consumer are requeued."""


@runtime_checkable
class Broker(Protocol):
    """A message broker with the topology and semantics of this module."""

    async def start(self) -> None:
        """Connect and declare the shared topology (control, dead letters,
        broadcast).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """

    async def stop(self) -> None:
        """Cancel every consumer, requeue what they held, close connections."""

    async def ping(self) -> bool:
        """Tell whether the broker is reachable now, without side effects."""

    async def publish_jobs(self, task_id: str, bodies: Sequence[bytes]) -> None:
        """Publish job messages to the task's queue (declared when missing),
        returning once every one is confirmed."""

    async def consume_jobs(
        self, task_id: str, handler: Handler, *, prefetch: int
    ) -> Subscription:
        """Consume the task's queue with at most ``prefetch`` unacked messages."""

    async def purge_jobs(self, task_id: str) -> int:
        """Drop every ready message of the task's queue; return how many."""

    async def delete_jobs(self, task_id: str) -> None:
        """Delete the task's queue (its task has ended)."""

    async def job_depth(self, task_id: str) -> int:
        """Return how many messages wait in the task's queue."""

    async def publish_control(self, body: bytes) -> None:
        """Publish a control message to the control queue, confirmed."""

    async def consume_control(self, handler: Handler, *, prefetch: int) -> Subscription:
        """Consume the shared control queue."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a control message to the dead-letter queue with ``reason``.

        The copy is confirmed before the original is acked, so the message is
        never lost between the two.
        """

    async def broadcast(self, body: bytes) -> None:
        """Publish to every supervisor's broadcast queue."""

    async def consume_broadcasts(self, handler: Handler) -> Subscription:
        """Hear broadcasts on a queue of this process's own."""
