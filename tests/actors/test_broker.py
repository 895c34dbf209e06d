"""The broker contract, run against the in-process broker and a real RabbitMQ.

Every RabbitMQ test has names of its own (``broker_prefix``) and deletes its
queues and exchange afterwards. Tests wait by polling a condition with a
deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from actors.broker import REASON_HEADER, Broker, Delivery, Subscription
from actors.broker_memory import MemoryBroker
from actors.broker_rabbitmq import RabbitBroker
from actors.errors import BrokerError, BrokerUnavailable
from tests.support.proxy import CuttableProxy

MANAGEMENT = "http://127.0.0.1:15672/api"
GUEST = {"Authorization": aiohttp.encode_basic_auth("guest", "guest")}
TASK = "t1"


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 5.0
) -> None:
    """Poll ``condition`` until it holds, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def depth_is(broker: Broker, expected: int) -> None:
    async def check() -> bool:
        return await broker.job_depth(TASK) == expected

    await eventually(check, f"job depth {expected}")


class Recorder:
    """A handler that records deliveries and settles them as told."""

    def __init__(self, *, ack: bool = True) -> None:
        self.ack = ack
        self.deliveries: list[Delivery] = []

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            await delivery.ack()


async def delete_rabbit_names(prefix: str) -> None:
    """Delete every queue and exchange whose name starts with ``prefix``."""
    async with aiohttp.ClientSession(headers=GUEST) as http:
        async with http.get(f"{MANAGEMENT}/queues/%2F?columns=name") as answer:
            queues = [q["name"] for q in await answer.json()]
        for name in queues:
            if name.startswith(prefix):
                await http.delete(f"{MANAGEMENT}/queues/%2F/{name}")
        await http.delete(f"{MANAGEMENT}/exchanges/%2F/{prefix}.broadcast")


async def rabbit_queue_exists(name: str) -> bool:
    async with (
        aiohttp.ClientSession(headers=GUEST) as http,
        http.get(f"{MANAGEMENT}/queues/%2F/{name}") as answer,
    ):
        return answer.status == 200


@pytest.fixture(params=["memory", "rabbitmq"])
async def broker(
    request: pytest.FixtureRequest, amqp_url: str, broker_prefix: str
) -> AsyncIterator[Any]:
    """A started broker of each kind, with names of the test's own."""
    if request.param == "memory":
        memory = MemoryBroker(prefix=broker_prefix)
        await memory.start()
        yield memory
        await memory.stop()
        return
    rabbit = RabbitBroker(amqp_url, prefix=broker_prefix, operation_timeout=10)
    await rabbit.start()
    try:
        yield rabbit
    finally:
        await rabbit.stop()
        await delete_rabbit_names(broker_prefix)


async def test_implements_the_protocol(broker: Any) -> None:
    assert isinstance(broker, Broker)
    subscription = await broker.consume_control(Recorder(), prefetch=1)
    assert isinstance(subscription, Subscription)
    await subscription.cancel()


async def test_jobs_arrive_in_publish_order(broker: Broker) -> None:
    bodies = [f"job-{i:03d}".encode() for i in range(50)]
    await broker.publish_jobs(TASK, bodies)
    recorder = Recorder()

    subscription = await broker.consume_jobs(TASK, recorder, prefetch=10)
    await eventually(lambda: len(recorder.bodies) == 50, "50 jobs")

    assert recorder.bodies == bodies
    assert not any(d.redelivered for d in recorder.deliveries)
    assert dict(recorder.deliveries[0].headers) == {}
    await subscription.cancel()


async def test_prefetch_bounds_unacked_deliveries(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"a", b"b", b"c", b"d", b"e"])
    recorder = Recorder(ack=False)

    subscription = await broker.consume_jobs(TASK, recorder, prefetch=2)
    await eventually(lambda: len(recorder.deliveries) == 2, "2 deliveries")
    await depth_is(broker, 3)
    assert recorder.bodies == [b"a", b"b"]

    # Acking one frees one slot: exactly one more message arrives.
    await recorder.deliveries[0].ack()
    await eventually(lambda: len(recorder.deliveries) == 3, "a third delivery")
    await depth_is(broker, 2)
    assert recorder.bodies == [b"a", b"b", b"c"]
    await subscription.cancel()


async def test_nack_requeues_with_redelivered_flag(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"x"])
    seen: list[Delivery] = []

    async def refuse_once(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()

    subscription = await broker.consume_jobs(TASK, refuse_once, prefetch=1)
    await eventually(lambda: len(seen) == 2, "a redelivery")

    assert [d.body for d in seen] == [b"x", b"x"]
    assert [d.redelivered for d in seen] == [False, True]
    await subscription.cancel()
    await depth_is(broker, 0)


async def test_nack_without_requeue_drops(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"x", b"y"])
    seen: list[bytes] = []

    async def drop(delivery: Delivery) -> None:
        seen.append(delivery.body)
        await delivery.nack(requeue=False)

    subscription = await broker.consume_jobs(TASK, drop, prefetch=1)
    await eventually(lambda: len(seen) == 2, "both jobs")
    await subscription.cancel()

    assert seen == [b"x", b"y"]
    await depth_is(broker, 0)


async def test_failing_handler_gets_its_message_again(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"x"])
    seen: list[bool] = []

    async def fail_once(delivery: Delivery) -> None:
        seen.append(delivery.redelivered)
        if len(seen) == 1:
            raise RuntimeError("the handler broke")
        await delivery.ack()

    subscription = await broker.consume_jobs(TASK, fail_once, prefetch=1)
    await eventually(lambda: len(seen) == 2, "a redelivery")

    assert seen == [False, True]
    await subscription.cancel()


async def test_cancel_hands_unacked_to_another_consumer(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"1", b"2", b"3"])
    first = Recorder(ack=False)
    subscription = await broker.consume_jobs(TASK, first, prefetch=3)
    await eventually(lambda: len(first.deliveries) == 3, "3 deliveries")

    await subscription.cancel()
    second = Recorder()
    other = await broker.consume_jobs(TASK, second, prefetch=3)
    await eventually(lambda: len(second.deliveries) == 3, "3 redeliveries")

    assert second.bodies == [b"1", b"2", b"3"]
    assert all(d.redelivered for d in second.deliveries)
    # The message is back in the queue: settling the old delivery is an error.
    with pytest.raises(BrokerError):
        await first.deliveries[0].ack()
    await other.cancel()


async def test_two_consumers_share_without_duplicates(broker: Broker) -> None:
    one, two = Recorder(), Recorder()
    sub_one = await broker.consume_jobs(TASK, one, prefetch=5)
    sub_two = await broker.consume_jobs(TASK, two, prefetch=5)
    bodies = [str(i).encode() for i in range(100)]

    await broker.publish_jobs(TASK, bodies)
    await eventually(lambda: len(one.bodies) + len(two.bodies) == 100, "100 deliveries")

    assert sorted(one.bodies + two.bodies) == sorted(bodies)
    # Round-robin reaches both consumers.
    assert one.bodies
    assert two.bodies
    await sub_one.cancel()
    await sub_two.cancel()


async def test_purge_and_depth(broker: Broker) -> None:
    assert await broker.job_depth(TASK) == 0
    await broker.publish_jobs(TASK, [b"j"] * 7)
    await depth_is(broker, 7)

    assert await broker.purge_jobs(TASK) == 7
    assert await broker.job_depth(TASK) == 0
    assert await broker.purge_jobs(TASK) == 0


async def test_delete_drops_the_queue_and_its_jobs(broker: Any) -> None:
    await broker.publish_jobs(TASK, [b"old"] * 3)
    await depth_is(broker, 3)
    name = broker.job_queue_name(TASK)

    await broker.delete_jobs(TASK)

    if isinstance(broker, MemoryBroker):
        assert name not in broker.queue_names()
    else:
        assert not await rabbit_queue_exists(name)
    await broker.delete_jobs(TASK)  # deleting twice is harmless
    await broker.publish_jobs(TASK, [b"new"])
    await depth_is(broker, 1)


async def test_delete_ends_local_consumers(broker: Any) -> None:
    await broker.publish_jobs(TASK, [b"1"])
    recorder = Recorder(ack=False)
    await broker.consume_jobs(TASK, recorder, prefetch=1)
    await eventually(lambda: len(recorder.deliveries) == 1, "a delivery")

    await broker.delete_jobs(TASK)

    with pytest.raises(BrokerError):
        await recorder.deliveries[0].ack()
    await broker.publish_jobs(TASK, [b"2"])
    await depth_is(broker, 1)  # nobody consumes the new queue
    assert recorder.bodies == [b"1"]


async def test_control_publish_and_consume(broker: Broker) -> None:
    recorder = Recorder()
    subscription = await broker.consume_control(recorder, prefetch=4)
    message = b'{"task_id": "t1", "action": "pause"}'

    await broker.publish_control(message)
    await eventually(lambda: recorder.bodies == [message], "the control message")
    await subscription.cancel()


async def test_dead_letter_carries_reason(broker: Any) -> None:
    seen: list[Delivery] = []

    async def refuse(delivery: Delivery) -> None:
        await broker.dead_letter(delivery, "not JSON")
        seen.append(delivery)  # after the copy is confirmed and the ack sent

    subscription = await broker.consume_control(refuse, prefetch=1)
    await broker.publish_control(b"{not json")
    await eventually(lambda: len(seen) == 1, "the message dead-lettered")

    if isinstance(broker, MemoryBroker):
        await eventually(lambda: bool(broker.dead_letters()), "a dead letter")
        assert broker.dead_letters() == [(b"{not json", "not JSON")]
    else:
        letters: list[Any] = []

        async def got_one() -> bool:
            letters.append(await broker.get_dead_letter())
            return letters[-1] is not None

        # The handler appends before it dead-letters: poll for the copy.
        await eventually(got_one, "a dead letter")
        letter = letters[-1]
        assert letter[0] == b"{not json"
        assert letter[1][REASON_HEADER] == "not JSON"
    # The original was acked: settling it again is refused.
    with pytest.raises(BrokerError):
        await seen[0].ack()
    await subscription.cancel()


async def test_double_settle_is_refused(broker: Broker) -> None:
    await broker.publish_jobs(TASK, [b"x"])
    recorder = Recorder()
    subscription = await broker.consume_jobs(TASK, recorder, prefetch=1)
    await eventually(lambda: len(recorder.deliveries) == 1, "a delivery")

    with pytest.raises(BrokerError, match="already settled"):
        await recorder.deliveries[0].ack()
    with pytest.raises(BrokerError, match="already settled"):
        await recorder.deliveries[0].nack()
    await subscription.cancel()


async def test_broadcast_reaches_every_subscriber(broker: Broker) -> None:
    one, two = Recorder(), Recorder()
    sub_one = await broker.consume_broadcasts(one)
    sub_two = await broker.consume_broadcasts(two)

    await broker.broadcast(b"paused t1")
    await broker.broadcast(b"resumed t1")
    await eventually(
        lambda: len(one.bodies) == 2 and len(two.bodies) == 2, "both broadcasts"
    )

    assert one.bodies == two.bodies == [b"paused t1", b"resumed t1"]
    await sub_one.cancel()
    await broker.broadcast(b"cancelled t1")
    await eventually(lambda: len(two.bodies) == 3, "the third broadcast")
    assert len(one.bodies) == 2
    await sub_two.cancel()


async def test_broadcast_without_subscribers_is_fine(broker: Broker) -> None:
    await broker.broadcast(b"nobody listens")


async def test_stop_requeues_unacked(broker: Any) -> None:
    await broker.publish_jobs(TASK, [b"1", b"2", b"3"])
    held = Recorder(ack=False)
    await broker.consume_jobs(TASK, held, prefetch=3)
    await eventually(lambda: len(held.deliveries) == 3, "3 deliveries")

    await broker.stop()
    await broker.start()
    again = Recorder()
    subscription = await broker.consume_jobs(TASK, again, prefetch=3)
    await eventually(lambda: len(again.deliveries) == 3, "3 redeliveries")

    assert again.bodies == [b"1", b"2", b"3"]
    assert all(d.redelivered for d in again.deliveries)
    await subscription.cancel()


async def test_operations_before_start_are_refused(broker_prefix: str) -> None:
    with pytest.raises(BrokerError, match="not started"):
        await MemoryBroker(prefix=broker_prefix).publish_jobs(TASK, [b"x"])
    with pytest.raises(BrokerError, match="not started"):
        await RabbitBroker("amqp://127.0.0.1/", prefix=broker_prefix).broadcast(b"x")


# -- RabbitMQ only -------------------------------------------------------------


@pytest.fixture
async def rabbit(amqp_url: str, broker_prefix: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(amqp_url, prefix=broker_prefix, operation_timeout=10)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        await delete_rabbit_names(broker_prefix)


async def test_rabbit_consumes_control_published_from_the_console(
    rabbit: RabbitBroker,
) -> None:
    recorder = Recorder()
    subscription = await rabbit.consume_control(recorder, prefetch=1)
    payload = '{"task_id": "t1", "action": "pause"}'
    request = {
        "routing_key": rabbit.control_queue,
        "payload": payload,
        "payload_encoding": "string",
        "properties": {"delivery_mode": 2},
    }

    async with (
        aiohttp.ClientSession(headers=GUEST) as http,
        http.post(
            f"{MANAGEMENT}/exchanges/%2F/amq.default/publish", json=request
        ) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["routed"] is True
    await eventually(lambda: len(recorder.bodies) == 1, "the console's message")

    assert json.loads(recorder.bodies[0]) == {"task_id": "t1", "action": "pause"}
    await subscription.cancel()


async def test_rabbit_publishes_many_jobs_with_confirms_in_flight(
    rabbit: RabbitBroker,
) -> None:
    bodies = [f'{{"task_id": "t1", "doc_ids": ["d{i}"]}}'.encode() for i in range(2000)]

    await rabbit.publish_jobs(TASK, bodies)

    assert await rabbit.job_depth(TASK) == 2000


async def test_rabbit_queue_deleted_elsewhere_fails_then_redeclares(
    rabbit: RabbitBroker,
) -> None:
    await rabbit.publish_jobs(TASK, [b"1"])
    name = rabbit.job_queue_name(TASK)
    async with aiohttp.ClientSession(headers=GUEST) as http:
        await http.delete(f"{MANAGEMENT}/queues/%2F/{name}")

    with pytest.raises(BrokerError, match="unroutable"):
        await rabbit.publish_jobs(TASK, [b"2"])
    await rabbit.publish_jobs(TASK, [b"3"])

    assert await rabbit.job_depth(TASK) == 1


async def test_rabbit_unreachable_at_start(broker_prefix: str) -> None:
    broker = RabbitBroker(
        "amqp://guest:secret@127.0.0.1:1/", prefix=broker_prefix, connect_timeout=2
    )
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1") as caught:
        await broker.start()
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is not None


async def test_rabbit_outage_times_out_then_recovers(broker_prefix: str) -> None:
    proxy = CuttableProxy()
    await proxy.listen()
    broker = RabbitBroker(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        prefix=broker_prefix,
        operation_timeout=1.5,
        reconnect_interval=0.2,
    )
    await broker.start()
    recorder = Recorder()
    subscription = await broker.consume_jobs(TASK, recorder, prefetch=5)
    try:
        await broker.publish_jobs(TASK, [b"before"])
        await eventually(lambda: recorder.bodies == [b"before"], "the first job")

        await proxy.outage()
        with pytest.raises(BrokerUnavailable):
            await broker.publish_jobs(TASK, [b"lost"])

        await proxy.listen()
        await broker.publish_jobs(TASK, [b"after"])
        await eventually(lambda: b"after" in recorder.bodies, "a job after it")
    finally:
        await subscription.cancel()
        await broker.stop()
        await proxy.outage()
        await delete_rabbit_names(broker_prefix)


async def test_ping_tells_whether_the_broker_is_reachable(broker: Broker) -> None:
    assert await broker.ping() is True
    await broker.stop()
    assert await broker.ping() is False
