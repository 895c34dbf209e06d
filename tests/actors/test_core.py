"""The actor core: mailbox order, ask and tell, lifecycle, and supervision."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from actors.core import (
    Actor,
    ActorError,
    ActorStopped,
    Backoff,
    ChildSpec,
    RestartLimitReached,
    RestartPolicy,
    Supervision,
)

pytestmark = pytest.mark.timeout(10)

TINY = Backoff(base=0.01, cap=0.2, jitter=0.0)


async def until(condition: Callable[[], bool], deadline: float = 2.0) -> None:
    """Poll a condition until it holds, failing the test after `deadline` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {deadline}s")
        await asyncio.sleep(0.002)


class Recorder(Actor):
    """Records what it handled; `boom` raises, `block` waits for `release`."""

    def __init__(self, name: str | None = None, fail_start: bool = False) -> None:
        super().__init__(name)
        self.handled: list[Any] = []
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.fail_start = fail_start

    async def on_start(self) -> None:
        if self.fail_start:
            raise RuntimeError("cannot start")
        self.events.append("start")

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "block":
            self.blocked.set()
            await self.release.wait()
        if message == "stop-self":
            await self.stop()
        self.handled.append(message)
        return ("echo", message)

    async def on_stop(self) -> None:
        self.events.append("stop")

    async def on_failure(self, exc: Exception) -> None:
        self.events.append(f"failure:{exc}")


async def test_tell_is_handled_in_order():
    actor = await Recorder().start()
    for i in range(50):
        actor.tell(i)
    await until(lambda: len(actor.handled) == 50)
    assert actor.handled == list(range(50))
    await actor.stop()


async def test_ask_returns_the_reply():
    actor = await Recorder().start()
    assert await actor.ask("hi") == ("echo", "hi")
    await actor.stop()


async def test_ask_error_goes_to_the_asker_and_the_actor_keeps_working():
    actor = await Recorder().start()
    with pytest.raises(ValueError, match="boom"):
        await actor.ask("boom")
    assert actor.actor_alive
    assert await actor.ask("after") == ("echo", "after")
    assert actor.events == ["start"]
    await actor.stop()


async def test_ask_timeout_raises_and_the_actor_still_handles_it():
    actor = await Recorder().start()
    with pytest.raises(TimeoutError):
        await actor.ask("block", timeout=0.01)
    actor.release.set()
    await until(lambda: actor.handled == ["block"])
    await actor.stop()


async def test_tell_error_fails_the_actor():
    actor = await Recorder().start()
    actor.tell("boom")
    assert isinstance(await actor.join(), ValueError)
    assert actor.events == ["start", "failure:boom"]
    assert not actor.actor_alive
    with pytest.raises(ActorStopped):
        actor.tell("late")


async def test_messages_told_before_stop_are_handled():
    actor = await Recorder().start()
    actor.tell("block")
    for i in range(5):
        actor.tell(i)
    stopping = asyncio.create_task(actor.stop())
    await actor.blocked.wait()
    await asyncio.sleep(0)  # stop() refuses new messages from its first step
    with pytest.raises(ActorStopped):
        actor.tell("after stop")
    actor.release.set()
    await stopping
    assert actor.handled == ["block", 0, 1, 2, 3, 4]
    assert actor.events == ["start", "stop"]
    assert await actor.join() is None


async def test_ask_to_a_stopped_actor_raises():
    actor = await Recorder().start()
    await actor.stop()
    with pytest.raises(ActorStopped, match="Recorder"):
        await actor.ask("anyone?")


async def test_pending_asks_of_a_dying_actor_fail_promptly():
    actor = await Recorder().start()
    actor.tell("block")
    actor.tell("boom")
    asks = [asyncio.create_task(actor.ask(i)) for i in range(3)]
    await asyncio.sleep(0)
    actor.release.set()
    results = await asyncio.wait_for(
        asyncio.gather(*asks, return_exceptions=True), timeout=1
    )
    assert all(isinstance(r, ActorStopped) for r in results)
    assert all(isinstance(r.__cause__, ValueError) for r in results)


async def test_stop_timeout_cancels_and_fails_the_ask_in_flight():
    actor = await Recorder().start()
    ask = asyncio.create_task(actor.ask("block"))
    await actor.blocked.wait()
    await actor.stop(timeout=0.01)
    with pytest.raises(ActorStopped):
        await asyncio.wait_for(ask, timeout=1)
    assert not actor.actor_alive


async def test_actor_can_stop_itself():
    actor = await Recorder().start()
    actor.tell("stop-self")
    actor.tell("queued before")
    assert await asyncio.wait_for(actor.join(), timeout=1) is None
    assert actor.handled == ["stop-self", "queued before"]
    assert actor.events == ["start", "stop"]


async def test_on_start_failure_surfaces_from_start():
    actor = Recorder(fail_start=True)
    with pytest.raises(RuntimeError, match="cannot start"):
        await actor.start()
    assert actor.actor_stopped.is_set()
    assert actor.events == ["failure:cannot start"]
    with pytest.raises(ActorError):
        await actor.start()


async def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    backoff = Backoff(base=1.0, cap=5.0, jitter=0.25)
    rng = random.Random(7)
    for attempt, raw in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delay = backoff.delay(attempt, rng)
        assert raw * 0.75 <= delay <= raw


class Flaky(Recorder):
    """Fails its start while the shared budget of failures lasts."""

    def __init__(self, starts: list[float], failures_left: list[int]) -> None:
        super().__init__("flaky")
        self.starts = starts
        self.failures_left = failures_left

    async def on_start(self) -> None:
        self.starts.append(time.monotonic())
        if self.failures_left[0] > 0:
            self.failures_left[0] -= 1
            raise RuntimeError("flaky start")


async def test_failed_child_is_restarted_with_growing_backoff():
    starts: list[float] = []
    budget = [0]
    policy = RestartPolicy(max_restarts=5, window=10.0, backoff=TINY)
    spec = ChildSpec("flaky", lambda: Flaky(starts, budget), policy)
    supervision = Supervision()
    first = await supervision.start_child(spec)
    budget[0] = 3
    first.tell("boom")  # fails once, then its next three starts fail
    await until(
        lambda: (
            supervision.child("flaky") is not first
            and supervision.child("flaky").actor_alive
        )
    )
    assert supervision.restarts("flaky") == 4
    assert len(starts) == 5
    # Restarts 2 to 4 come 0.02, 0.04 and 0.08 s after the failed start before.
    gaps = [b - a for a, b in pairwise(starts[1:])]
    for gap, expected in zip(gaps, [0.02, 0.04, 0.08], strict=True):
        assert gap >= expected * 0.9
    assert gaps[0] < gaps[2]
    await supervision.stop()


async def test_supervision_gives_up_after_the_bound_and_reports_why():
    reports: list[RestartLimitReached] = []

    async def on_give_up(report: RestartLimitReached) -> None:
        reports.append(report)

    policy = RestartPolicy(max_restarts=2, window=10.0, backoff=TINY)
    supervision = Supervision(on_give_up=on_give_up)
    await supervision.start([ChildSpec("bad", Recorder, policy)])

    async def keep_failing() -> None:
        while not reports:
            actor = supervision.child("bad")
            if actor.actor_alive:
                actor.tell("boom")
            await asyncio.sleep(0.002)

    failing = asyncio.create_task(keep_failing())
    report = await asyncio.wait_for(supervision.wait("bad"), timeout=2)
    await failing
    assert reports == [report]
    assert isinstance(report, RestartLimitReached)
    assert report.name == "bad"
    assert report.restarts == 2
    assert isinstance(report.last_error, ValueError)
    assert "'bad'" in str(report)
    assert not supervision.child("bad").actor_alive
    await supervision.stop()


async def test_child_that_stops_normally_is_not_restarted():
    supervision = Supervision()
    await supervision.start([ChildSpec("calm", Recorder)])
    first = supervision.child("calm")
    first.tell("stop-self")
    assert await asyncio.wait_for(supervision.wait("calm"), timeout=1) is None
    assert supervision.child("calm") is first
    assert supervision.restarts("calm") == 0
    await supervision.stop()


async def test_stop_stops_children_in_reverse_start_order():
    order: list[str] = []

    class Tracked(Recorder):
        async def on_stop(self) -> None:
            order.append(self.actor_name)

    def spec(name: str) -> ChildSpec:
        return ChildSpec(name, lambda: Tracked(name))

    supervision = Supervision()
    await supervision.start([spec("a"), spec("b"), spec("c")])
    await supervision.stop()
    assert order == ["c", "b", "a"]
    with pytest.raises(ActorError):
        await supervision.start_child(spec("d"))


async def test_failed_start_stops_the_children_already_started():
    order: list[str] = []

    class Tracked(Recorder):
        async def on_stop(self) -> None:
            order.append(self.actor_name)

    supervision = Supervision()
    specs = [
        ChildSpec("a", lambda: Tracked("a")),
        ChildSpec("b", lambda: Tracked("b")),
        ChildSpec("broken", lambda: Recorder(fail_start=True)),
    ]
    with pytest.raises(RuntimeError):
        await supervision.start(specs)
    assert order == ["b", "a"]


async def test_stop_during_backoff_restarts_nothing():
    built: list[Recorder] = []

    def factory() -> Recorder:
        built.append(Recorder())
        return built[-1]

    policy = RestartPolicy(backoff=Backoff(base=30.0, cap=30.0, jitter=0.0))
    supervision = Supervision()
    await supervision.start([ChildSpec("slow", factory, policy)])
    built[0].tell("boom")
    await built[0].join()
    await asyncio.wait_for(supervision.stop(), timeout=1)
    assert len(built) == 1
    assert await supervision.wait("slow") is None
