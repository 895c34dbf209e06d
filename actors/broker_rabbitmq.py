"""The RabbitMQ broker, through aio-pika, for distributed runs.

Channels: one publishing channel with publisher confirms (it also declares
and deletes queues), and one channel per subscription, so that a slow
consumer never holds up publishing and cancelling a subscription can close
its channel, which is what makes RabbitMQ requeue the messages it held.

Queues are classic and durable: the jobs of a task are plain FIFO work that
needs neither a delivery limit (the store counts attempts) nor replication
on a single node; quorum queues would also refuse the exclusive broadcast
queues. Messages are persistent (delivery mode 2).

Reconnection is aio-pika's robust connection: after a broker restart or a
network cut it reopens the channels and redeclares queues, bindings and
consumers. Messages unacked at the cut come back with ``redelivered`` set;
settling their old deliveries raises :class:`BrokerError`. A publish that
meets an outage is retried (only the unconfirmed messages) until
``operation_timeout`` runs out, then raises :class:`BrokerUnavailable`; a
retried message may therefore arrive twice, which job handlers tolerate
(invariant 2). Broadcasts sent while a subscriber is disconnected are lost to
it: the store is the truth and a supervisor reconciles on reconnect.

Every job-queue operation but :meth:`RabbitBroker.delete_jobs` declares the
queue when it is missing, as the in-process broker does. Deleting a queue
that another process still consumes makes aio-pika in that process redeclare
it to restore its consumer: cancel consumers everywhere (the broadcast) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    ConsumerTag,
    DeliveryMode,
)
from yarl import URL

from actors.broker import (
    DEFAULT_PREFIX,
    REASON_HEADER,
    Delivery,
    Handler,
    run_handler,
)
from actors.errors import BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Confirms kept in flight at once when publishing many messages; one by one
# runs at ~0.8k msg/s on this hardware, 500 in flight at ~3.5k msg/s.
CONFIRM_WINDOW = 500

# Broadcasts are handled one at a time so that a supervisor applies control
# transitions in the order they were broadcast (pause before resume).
BROADCAST_PREFETCH = 1

# Errors after which the same operation may succeed once the robust
# connection has reopened its channel.
_TRANSIENT: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)
_SETTLE_ERRORS: tuple[type[BaseException], ...] = (
    *_TRANSIENT,
    aio_pika.exceptions.MessageProcessError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    OSError,
    TimeoutError,
)


class RabbitDelivery:
    """An aio-pika message handed to a subscription's handler, settled once.

    Settling twice, or after the consumer's channel closed (the subscription
    was cancelled, or the connection dropped, and the broker has requeued the
    message), raises :class:`BrokerError` instead of aio-pika's own errors.
    """

    def __init__(
        self,
        message: AbstractIncomingMessage,
        queue_name: str,
        subscription: RabbitSubscription | None = None,
    ) -> None:
        self._message = message
        self._queue_name = queue_name
        self._subscription = subscription
        self._settled = False
        self._headers: Mapping[str, Any] = dict(message.headers or {})

    @property
    def body(self) -> bytes:
        """The message's payload."""
        return self._message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers (empty when it has none)."""
        return self._headers

    @property
    def redelivered(self) -> bool:
        """Whether the broker delivered this message before."""
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        await self._settle("ack", self._message.ack)

    async def nack(self, *, requeue: bool = True) -> None:
        """Refuse: the message goes back to its queue, or is dropped."""
        await self._settle("nack", lambda: self._message.nack(requeue=requeue))

    async def _settle(self, what: str, settle: Callable[[], Awaitable[None]]) -> None:
        # The flag is set before the first await, so two settlements racing
        # from different tasks cannot both reach the channel (a second ack of
        # one delivery tag would cost the whole channel).
        if self._settled:
            raise BrokerError(
                f"cannot {what} delivery {self._message.delivery_tag!r} of queue "
                f"{self._queue_name!r}: it is already settled"
            )
        self._settled = True
        if self._subscription is not None and self._subscription.cancelled:
            # The channel is closing (or closed): an ack sent now is a channel
            # error that RabbitMQ escalates to the whole connection. Closing
            # the channel requeues the message anyway.
            raise BrokerError(
                f"cannot {what} delivery {self._message.delivery_tag!r} of queue "
                f"{self._queue_name!r}: its subscription was cancelled and the "
                "broker requeues the message"
            )
        try:
            await settle()
        except _SETTLE_ERRORS as err:
            raise BrokerError(
                f"cannot {what} delivery {self._message.delivery_tag!r} of queue "
                f"{self._queue_name!r}: its channel is closed and the broker "
                "requeues the message"
            ) from err


class RabbitSubscription:
    """One consumer on a channel of its own.

    Each delivery runs its handler in a task of its own, so up to ``prefetch``
    handlers run at once; they start in queue order.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        channel: AbstractRobustChannel,
        queue: AbstractQueue,
        handler: Handler,
    ) -> None:
        self._broker = broker
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._tag: ConsumerTag | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.cancelled = False

    @property
    def queue_name(self) -> str:
        """The name of the queue this subscription consumes."""
        return self._queue.name

    async def start(self) -> None:
        """Register the consumer with the broker (manual acks)."""
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def cancel(self) -> None:
        """Stop consuming; the broker requeues this consumer's unacked messages.

        ``basic.cancel`` alone leaves delivered messages unacked on the
        channel, so the channel is closed as well: that is what requeues them.
        Handlers still running are left to finish; settling afterwards raises
        :class:`BrokerError`.
        """
        if self.cancelled:
            return
        self.cancelled = True
        self._broker.forget(self)
        timeout = self._broker.operation_timeout
        if self._tag is not None:
            # During an outage basic.cancel waits for the connection: bound it.
            # The consumer is dropped from aio-pika's restore list either way.
            with contextlib.suppress(*_TRANSIENT, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.cancel(self._tag)
        with contextlib.suppress(*_TRANSIENT, TimeoutError):
            async with asyncio.timeout(timeout):
                await self._channel.close()

    async def abort_handlers(self) -> None:
        """Cancel handlers still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The handler runs in a task of ours, not aiormq's: closing the
        # channel on cancel() must not cancel a handler mid-document.
        task = asyncio.get_running_loop().create_task(
            self._run(RabbitDelivery(message, self._queue.name, self))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, delivery: RabbitDelivery) -> None:
        await run_handler(self._handler, delivery, self._queue.name)


class RabbitBroker:
    """The :class:`~actors.broker.Broker` on RabbitMQ.

    Args:
        url: The AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/``.
        prefix: The prefix of every queue and exchange name.
        operation_timeout: Seconds a publish, declaration or queue operation
            may take, outages included, before :class:`BrokerUnavailable`.
        connect_timeout: Seconds the first connection may take.
        reconnect_interval: Seconds between reconnection attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        operation_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 2.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self.operation_timeout = operation_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self.control_queue = f"{prefix}.control"
        self.dead_letter_queue = f"{prefix}.control.dead"
        self.broadcast_exchange = f"{prefix}.broadcast"
        self.connection_name = f"taskpoint {prefix} {uuid.uuid4().hex[:8]}"
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._fanout: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._subscriptions: set[RabbitSubscription] = set()
        self._online = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect and declare the control, dead-letter and broadcast topology.

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached or refused the login.
        """
        if self._connection is not None:
            raise BrokerError(f"rabbitmq broker {self._prefix!r} is already started")
        where = str(URL(self._url).with_password(None))
        try:
            self._connection = await aio_pika.connect_robust(
                self._url,
                timeout=self._connect_timeout,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": self.connection_name},
            )
        except _CONNECT_ERRORS as err:
            raise BrokerUnavailable(f"cannot connect to RabbitMQ at {where!r}") from err
        self._online = True
        self._connection.close_callbacks.add(self._on_connection_lost)
        self._connection.reconnect_callbacks.add(self._on_reconnected)
        try:
            await self._declare_topology()
        except BaseException:
            await self._connection.close()
            raise
        log.info("rabbitmq broker started at %s, prefix=%s", where, self._prefix)

    async def _declare_topology(self) -> None:
        connection = self._live_connection()
        # The publishing channel raises on unroutable mandatory messages, so
        # a job sent to a deleted queue fails loudly instead of vanishing.
        self._channel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        await self._declare_queue(self.control_queue)
        await self._declare_queue(self.dead_letter_queue)
        self._fanout = await self._within_deadline(
            f"declare exchange {self.broadcast_exchange!r}",
            lambda: self._publisher().declare_exchange(
                self.broadcast_exchange, aio_pika.ExchangeType.FANOUT, durable=True
            ),
        )

    async def stop(self) -> None:
        """Cancel every consumer (the broker requeues what they held), end
        handlers still running, close the channels, then the connection."""
        subscriptions = list(self._subscriptions)
        # Concurrently: during an outage each cancel waits out its timeout.
        await asyncio.gather(*(s.cancel() for s in subscriptions))
        await asyncio.gather(*(s.abort_handlers() for s in subscriptions))
        if self._channel is not None:
            with contextlib.suppress(*_TRANSIENT, TimeoutError):
                async with asyncio.timeout(self.operation_timeout):
                    await self._channel.close()
        if self._connection is not None:
            await self._connection.close()
        self._channel = self._fanout = self._connection = None
        self._declared.clear()
        log.info("rabbitmq broker stopped, prefix=%s", self._prefix)

    # -- jobs --------------------------------------------------------------

    def job_queue_name(self, task_id: str) -> str:
        """Return the name of the task's job queue."""
        return f"{self._prefix}.task.{task_id}"

    async def publish_jobs(self, task_id: str, bodies: Sequence[bytes]) -> None:
        """Publish job messages to the task's queue (declared when missing),
        returning once RabbitMQ has confirmed every one.

        Raises:
            BrokerUnavailable: not all were confirmed within the operation
                timeout; some may have been, so the caller republishes.
            BrokerError: RabbitMQ refused a message, or the queue is gone.
        """
        name = self.job_queue_name(task_id)
        if name not in self._declared:
            await self._declare_queue(name)
        await self._publish(self._publisher().default_exchange, name, bodies)

    async def consume_jobs(
        self, task_id: str, handler: Handler, *, prefetch: int
    ) -> RabbitSubscription:
        """Consume the task's queue with at most ``prefetch`` unacked messages."""
        return await self._subscribe(self.job_queue_name(task_id), handler, prefetch)

    async def purge_jobs(self, task_id: str) -> int:
        """Drop every ready message of the task's queue; return how many.

        Unacked messages are not ready, so they are not purged.
        """
        queue = await self._declare_queue(self.job_queue_name(task_id))
        result = await self._within_deadline(
            f"purge queue {queue.name!r}", lambda: queue.purge()
        )
        return int(result.message_count or 0)

    async def delete_jobs(self, task_id: str) -> None:
        """Delete the task's queue, after cancelling this broker's consumers
        of it (aio-pika would otherwise redeclare it to restore them)."""
        name = self.job_queue_name(task_id)
        for subscription in list(self._subscriptions):
            if subscription.queue_name == name:
                await subscription.cancel()
        await self._within_deadline(
            f"delete queue {name!r}", lambda: self._publisher().queue_delete(name)
        )
        self._declared.discard(name)

    async def ping(self) -> bool:
        """Tell whether the connection and the publishing channel are open."""
        connection, channel = self._connection, self._channel
        return bool(
            self._online
            and connection is not None
            and not connection.is_closed
            and channel is not None
            and not channel.is_closed
        )

    async def job_depth(self, task_id: str) -> int:
        """Return how many ready messages wait in the task's queue."""
        queue = await self._declare_queue(self.job_queue_name(task_id))
        result = queue.declaration_result
        return int(result.message_count or 0)

    # -- control -----------------------------------------------------------

    async def publish_control(self, body: bytes) -> None:
        """Publish a control message to the control queue, confirmed."""
        exchange = self._publisher().default_exchange
        await self._publish(exchange, self.control_queue, [body])

    async def consume_control(
        self, handler: Handler, *, prefetch: int
    ) -> RabbitSubscription:
        """Consume the shared control queue."""
        return await self._subscribe(self.control_queue, handler, prefetch)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy the message, its headers and ``reason`` to the dead-letter
        queue; ack the original only once the copy is confirmed.

        A crash between the two leaves a duplicate in the dead-letter queue,
        never a loss.
        """
        headers = {**delivery.headers, REASON_HEADER: reason}
        exchange = self._publisher().default_exchange
        await self._publish(exchange, self.dead_letter_queue, [delivery.body], headers)
        await delivery.ack()
        log.debug("dead-lettered a control message: %s", reason)

    async def get_dead_letter(self) -> tuple[bytes, Mapping[str, Any]] | None:
        """Take the oldest dead letter off its queue, or None; for inspection."""
        queue = await self._declare_queue(self.dead_letter_queue)
        message = await self._within_deadline(
            "get a dead letter", lambda: queue.get(no_ack=True, fail=False)
        )
        if message is None:
            return None
        return message.body, dict(message.headers or {})

    async def broadcast(self, body: bytes) -> None:
        """Publish to every supervisor's broadcast queue, confirmed.

        Not mandatory: a broadcast that no supervisor hears is not an error.
        """
        if self._fanout is None:
            raise BrokerError(f"rabbitmq broker {self._prefix!r} is not started")
        await self._publish(self._fanout, "", [body], mandatory=False)

    async def consume_broadcasts(self, handler: Handler) -> RabbitSubscription:
        """Hear broadcasts, in order, on an exclusive queue of this connection.

        The queue is named by the client (``{prefix}.broadcast.<random>``) so
        that aio-pika can redeclare and rebind it after a reconnection; it is
        auto-deleted with its consumer or connection.
        """
        name = f"{self.broadcast_exchange}.{uuid.uuid4().hex[:12]}"

        async def declare(channel: AbstractRobustChannel) -> AbstractQueue:
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(self.broadcast_exchange)
            return queue

        return await self._consume_on_own_channel(
            name, handler, BROADCAST_PREFETCH, declare
        )

    # -- internals ---------------------------------------------------------

    def forget(self, subscription: RabbitSubscription) -> None:
        """Drop a cancelled subscription from the ones :meth:`stop` cancels."""
        self._subscriptions.discard(subscription)

    async def _subscribe(
        self, name: str, handler: Handler, prefetch: int
    ) -> RabbitSubscription:
        async def declare(channel: AbstractRobustChannel) -> AbstractQueue:
            return await channel.declare_queue(name, durable=True)

        self._declared.add(name)
        return await self._consume_on_own_channel(name, handler, prefetch, declare)

    async def _consume_on_own_channel(
        self,
        name: str,
        handler: Handler,
        prefetch: int,
        declare: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]],
    ) -> RabbitSubscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch!r}")
        connection = self._live_connection()

        async def open_consumer() -> RabbitSubscription:
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                queue = await declare(channel)
                subscription = RabbitSubscription(self, channel, queue, handler)
                await subscription.start()
            except BaseException:
                with contextlib.suppress(*_TRANSIENT):
                    await channel.close()
                raise
            return subscription

        subscription = await self._within_deadline(f"consume {name!r}", open_consumer)
        self._subscriptions.add(subscription)
        return subscription

    async def _declare_queue(self, name: str) -> AbstractQueue:
        # robust=False: durable queues outlive a broker restart by themselves,
        # and a deleted task queue must not be redeclared on reconnection.
        queue = await self._within_deadline(
            f"declare queue {name!r}",
            lambda: self._publisher().declare_queue(name, durable=True, robust=False),
        )
        self._declared.add(name)
        return queue

    async def _publish(
        self,
        exchange: AbstractExchange,
        routing_key: str,
        bodies: Sequence[bytes],
        headers: Mapping[str, Any] | None = None,
        *,
        mandatory: bool = True,
    ) -> None:
        messages = [
            aio_pika.Message(
                bytes(body),
                delivery_mode=DeliveryMode.PERSISTENT,
                headers=dict(headers) if headers else None,
            )
            for body in bodies
        ]
        for start in range(0, len(messages), CONFIRM_WINDOW):
            window = messages[start : start + CONFIRM_WINDOW]
            await self._publish_window(exchange, routing_key, window, mandatory)

    async def _publish_window(
        self,
        exchange: AbstractExchange,
        routing_key: str,
        messages: list[aio_pika.Message],
        mandatory: bool,
    ) -> None:
        """Publish up to CONFIRM_WINDOW messages with all confirms in flight;
        after an outage, republish only those not confirmed."""
        pending = messages

        async def publish_pending() -> None:
            nonlocal pending
            results = await asyncio.gather(
                *(
                    exchange.publish(m, routing_key, mandatory=mandatory)
                    for m in pending
                ),
                return_exceptions=True,
            )
            failed = [
                (m, r)
                for m, r in zip(pending, results, strict=True)
                if isinstance(r, BaseException)
            ]
            pending = [m for m, _ in failed]
            if failed:
                raise self._publish_error(routing_key, [e for _, e in failed])

        await self._within_deadline(
            f"publish {len(messages)} message(s) to {routing_key!r}", publish_pending
        )

    def _publish_error(
        self, routing_key: str, errors: list[BaseException]
    ) -> BaseException:
        """Pick the error to raise for failed publishes: a refusal is final,
        anything else is treated as transient and retried."""
        for error in errors:
            if isinstance(error, aiormq.exceptions.PublishError):
                # Mandatory and unroutable: the queue was deleted under us.
                # Forget it, so that the next publish declares it again.
                self._declared.discard(routing_key)
                refused = BrokerError(
                    f"RabbitMQ returned a message for {routing_key!r} as "
                    "unroutable: the queue does not exist"
                )
            elif isinstance(error, aiormq.exceptions.DeliveryError):
                refused = BrokerError(
                    f"RabbitMQ refused a message for {routing_key!r}: {error}"
                )
            else:
                continue
            refused.__cause__ = error
            return refused
        if isinstance(errors[0], Exception):
            return errors[0]
        # A confirm future cancelled by a closing channel is not our own
        # cancellation: report it as a connection failure, to be retried.
        return ConnectionError(f"publish to {routing_key!r} was interrupted")

    async def _within_deadline(
        self, what: str, operation: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``operation``, retrying it after transient connection errors,
        until the operation timeout; then raise :class:`BrokerUnavailable`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.operation_timeout
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await operation()
            except TimeoutError as err:
                raise BrokerUnavailable(
                    f"{what}: no answer from RabbitMQ within "
                    f"{self.operation_timeout:g} s"
                ) from err
            except _TRANSIENT as err:
                attempt += 1
                if loop.time() >= deadline:
                    raise BrokerUnavailable(f"{what}: {err!r}") from err
                log.warning("%s failed (%r); retry %d", what, err, attempt)
                # The robust connection may not have noticed the cut yet.
                pause = min(0.1 * 2**attempt, 2.0, max(deadline - loop.time(), 0))
                await asyncio.sleep(pause)

    def _live_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError(f"rabbitmq broker {self._prefix!r} is not started")
        return self._connection

    def _publisher(self) -> AbstractRobustChannel:
        if self._channel is None:
            raise BrokerError(f"rabbitmq broker {self._prefix!r} is not started")
        return self._channel

    def _on_connection_lost(self, _sender: object, error: BaseException | None) -> None:
        # aio-pika calls this for the cut and again for every failed attempt
        # to reconnect: warn once per outage.
        connection = self._connection
        if self._online and connection is not None and not connection.close_called:
            self._online = False
            log.warning("lost the RabbitMQ connection (%r); reconnecting", error)

    def _on_reconnected(self, _sender: object) -> None:
        self._online = True
        log.warning("reconnected to RabbitMQ, prefix=%s", self._prefix)
