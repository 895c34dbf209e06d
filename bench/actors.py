"""What the actor system costs: throughput, pause, cancel, resume and memory.

Run as ``python -m bench.actors [--quick] [--json PATH] [--only NAME]``.

Every measurement runs one in-process :class:`actors.supervisor.Supervisor`
on a :class:`store.sqlite.SQLiteStore` in a temporary folder and a
:class:`actors.broker_rabbitmq.RabbitBroker` on RabbitMQ, under a queue prefix
of its own whose queues and exchanges are deleted at the end. Control requests
go the way an operator's do: a :class:`actors.messages.ControlMessage`
published on the control queue (``broker.publish_control``).

throughput
    No-op documents with checkpoints on. A grid of supervisor settings
    (concurrency x job size) is tried on a smaller task, and the fastest is run
    on the full task at ``synchronous=full`` (the store's default) and at
    ``normal``. The figure is documents per second from the task's
    ``started_at`` (state ``running``) to its ``completed_at`` (the sweep's
    transition); the time to the last document's checkpoint is shown too. The
    baseline, measured in the same run (before and after ours), is raw aio-pika
    on the same broker: N persistent 200-byte messages pre-published to a
    classic durable queue (the kind our job queues are), then consumed with
    manual acks and prefetch 200, timed until the last ack. The ratio divides
    ours by the faster of the two raw runs. Afterwards the store must show
    every document completed with exactly one attempt, logged as completed,
    the processor called once per document, and exact counters.
pause
    Documents that take 2-5 ms, concurrency 16, on a task large enough to keep
    running. Each cycle: run for 10-40 ms, publish ``pause``, poll the store
    until the task is ``paused``, hold it paused, publish ``resume`` and wait
    for a document to start. Latency = the last document start (the
    processor's ``process`` call) after the publish, minus the publish time;
    0 when none started after it. A start after the moment the task was seen
    ``paused``, or after its stored ``paused_at``, breaks invariant 4. The
    first 5 pauses, issued while the supervisor is still publishing the new
    task's open documents, are reported apart as a cold start.
cancel
    Tasks of 12 documents whose processor awaits ``asyncio.sleep(3600)``,
    concurrency 8, so 8 are in flight. Each cycle publishes ``cancel`` and
    measures, for every in-flight document, the time from the publish to its
    ``CancelledError`` handler; the task must then reach ``cancelled`` with
    every document cancelled.
resume
    A task of 100,000 documents, half of them completed by claiming and
    settling directly through the store in batches, then ``paused`` (its job
    queue is empty, so resume must reconcile from the store). The figure is the
    time from publishing ``resume`` to the first document start. Meanwhile a
    ``sqlite3`` trace callback and a progress handler on the store's own
    connection record every statement (and the virtual-machine steps) until
    the supervisor has read the last open document; each distinct statement is
    listed with its query plan, and any full scan of a documents table is
    flagged. The task then runs to the end: the processor must have been
    called exactly once for each document that was pending, and never for a
    completed one.
memory
    A 1,000-document and a 100,000-document no-op task, each through a fresh
    supervisor; documents are created before measuring. For each: the peak of
    ``tracemalloc`` above its level at the start, and the growth of VmRSS
    (``/proc/self/status``, sampled every 50 ms). The figure is the
    difference between the two sizes. These runs use ``synchronous=normal``,
    which changes no memory but halves the time.

``--quick`` runs smaller sizes (listed in the output) as a smoke test. Results
go to stdout, progress to stderr. A missed target prints ``MISSED`` and does not
change the exit status (timings are noisy on a shared machine); a broken
invariant prints ``FAILED`` and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import re
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from actors.broker_rabbitmq import RabbitBroker
from actors.messages import ControlMessage
from actors.processors.base import ProcessorContext
from actors.supervisor import Supervisor, SupervisorConfig
from store.models import DocumentInput, NewTask, Outcome, Task, TaskConfig
from store.sqlite import SQLiteStore
from store.states import DocumentState, TaskState
from tests.store.invariants import assert_counts_exact
from tests.support.rabbit import delete_prefixed

AMQP_URL = os.environ.get(
    "TASKPOINT_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
)
NAMES = ("throughput", "pause", "cancel", "resume", "memory")
T = TaskState

TARGET_RATIO = 1.0  # ours / raw aio-pika, at least
TARGET_PAUSE_P99_MS = 50.0
TARGET_CANCEL_P99_MS = 100.0
TARGET_RESUME_MS = 100.0
TARGET_MEMORY_MB = 50.0

RAW_BODY = b"x" * 200
RAW_CONFIRM_WINDOW = 500  # as CONFIRM_WINDOW in actors/broker_rabbitmq.py
RAW_PREFETCH = 200
SWEEP_INTERVAL = 0.1
GRID = [(c, j) for c in (64, 256) for j in (50, 100, 200)]
PAUSE_CONCURRENCY = 16
CANCEL_CONCURRENCY = 8
COLD_PAUSES = 5
CANCEL_TASK_SIZE = 12
RESUME_BATCH = 1000

log = logging.getLogger("bench.actors")


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is."""

    grid_docs: int
    throughput_docs: int
    pauses: int
    pause_task: int
    cancels: int
    resume_docs: int
    memory_small: int
    memory_large: int


FULL = Sizes(10_000, 20_000, 200, 60_000, 200, 100_000, 1_000, 100_000)
QUICK = Sizes(3_000, 5_000, 50, 20_000, 50, 20_000, 1_000, 20_000)


@dataclass
class Report:
    """Every figure and every check of one run."""

    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    summary: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    warnings: dict[str, dict[str, int]] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """Record an invariant check (a failure makes the exit status 1)."""
        self.checks.append((name, ok, detail))
        progress(f"  check {'ok' if ok else 'FAILED'}: {name} {detail}")

    def target(self, name: str, value: str, target: str, met: bool | None) -> None:
        """Record a figure against its target, for the final table."""
        self.summary.append((name, value, target, met))

    @property
    def failed(self) -> bool:
        """Whether any invariant check failed."""
        return any(not ok for _, ok, _ in self.checks)


class WarningTally(logging.Handler):
    """Counts the warnings and errors the engine logs, by message shape."""

    IDS = re.compile(r"[0-9a-f]{8,}|\d+|<[^>]*>")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        """Count one record."""
        message = self.IDS.sub("#", record.getMessage())[:160]
        self.seen[f"{record.levelname} {record.name}: {message}"] += 1


def progress(line: str) -> None:
    """Print a progress line to stderr."""
    print(line, file=sys.stderr, flush=True)


# Processors: stand-ins for user code, recording when documents start.


class CountingNoop:
    """Completes every document at once, counting the calls per document."""

    name = "noop"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.first_start: float | None = None
        self.started = asyncio.Event()

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Count the call and return at once."""
        if self.first_start is None:
            self.first_start = time.perf_counter()
            self.started.set()
        self.calls[ctx.doc_id] += 1
        return None


class PacedProcessor:
    """Takes 2-5 ms per document; records every start (monotonic and wall)."""

    name = "paced"

    def __init__(self, seed: int = 7) -> None:
        self.starts: list[float] = []
        self.wall_starts: list[float] = []
        self.started = asyncio.Event()
        self._rng = random.Random(seed)

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Record the start, then take a few milliseconds."""
        self.starts.append(time.perf_counter())
        self.wall_starts.append(time.time())
        self.started.set()
        await asyncio.sleep(self._rng.uniform(0.002, 0.005))
        return None


class SleepingProcessor:
    """Sleeps an hour; records each start and each interruption, per task."""

    name = "sleeping"

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {}
        self.interrupts: dict[str, list[float]] = {}
        self.changed = asyncio.Event()

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Await a long sleep; note the moment it is cancelled."""
        task_id = ctx.task.task_id
        self.starts.setdefault(task_id, []).append(time.perf_counter())
        self.changed.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.interrupts.setdefault(task_id, []).append(time.perf_counter())
            self.changed.set()
            raise
        return None


# The rig: a store, a broker and a supervisor of the bench's own.


class Rig:
    """A SQLite store, a RabbitMQ broker on a fresh prefix, and a supervisor.

    ``async with`` opens the store and the broker; :meth:`start_supervisor`
    starts the supervisor; leaving stops all three and deletes the prefix's
    queues and exchanges.
    """

    def __init__(
        self,
        path: Path,
        processor: Any,
        config: SupervisorConfig,
        *,
        synchronous: str = "full",
        url: str = AMQP_URL,
    ) -> None:
        self.prefix = f"tp-bench-{uuid.uuid4().hex[:10]}"
        self.store = SQLiteStore(path, synchronous=synchronous)
        self.broker = RabbitBroker(url, prefix=self.prefix)
        self.processor = processor
        self.config = config
        self.supervisor: Supervisor | None = None

    async def __aenter__(self) -> Rig:
        await self.store.start()
        await self.broker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_supervisor()
        await self.broker.stop()
        await self.store.stop()
        await delete_prefixed(self.prefix)

    async def start_supervisor(self) -> Supervisor:
        """Start a supervisor whose every task type runs the rig's processor."""
        self.supervisor = Supervisor(
            self.store,
            self.broker,
            self.config,
            processors=lambda _: self.processor,
        )
        await self.supervisor.start()
        return self.supervisor

    async def stop_supervisor(self) -> None:
        """Stop the supervisor, if one runs."""
        if self.supervisor is not None:
            await self.supervisor.stop(timeout=60)
            self.supervisor = None

    async def create_task(self, n: int, type_: str = "noop") -> str:
        """Create a task of ``n`` short documents; return its id."""
        task = await self.store.create_task(
            NewTask(tenant="bench", type=type_, config=TaskConfig()),
            documents(n),
        )
        return task.task_id

    async def control(self, task_id: str, action: str) -> None:
        """Publish a control request on the control queue, as an operator would."""
        body = ControlMessage(task_id=task_id, action=action).model_dump_json()
        await self.broker.publish_control(body.encode())

    async def wait_state(
        self,
        task_id: str,
        states: Iterable[TaskState],
        *,
        within: float = 60.0,
        every: float = 0.05,
    ) -> Task:
        """Poll the store until the task is in one of ``states``."""
        wanted = set(states)
        deadline = time.perf_counter() + within
        while True:
            task = await self.store.get_task(task_id)
            if task.state in wanted:
                return task
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"task {task_id!r} still {task.state} after {within} s"
                )
            await asyncio.sleep(every)


def documents(n: int) -> Iterator[DocumentInput]:
    """Yield ``n`` short inline documents."""
    for i in range(n):
        yield DocumentInput(doc_id=f"d{i:07d}", text=f"document {i}")


def supervisor_config(concurrency: int, job_size: int, **more: Any) -> SupervisorConfig:
    """Return the supervisor settings the bench uses."""
    return SupervisorConfig(
        concurrency=concurrency,
        job_size=job_size,
        sweep_interval=SWEEP_INTERVAL,
        drain_timeout=5.0,
        time_limit=7200.0,
        **more,
    )


def percentiles(values: list[float]) -> dict[str, float]:
    """Return the count, p50, p99 and max of ``values`` (nearest rank)."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"n": len(ordered), "p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


async def all_checkpoints(store: SQLiteStore, task_id: str) -> list[Any]:
    """Return every document checkpoint of a task, paging by sequence."""
    docs: list[Any] = []
    after = -1
    while page := await store.page_documents(task_id, after=after, limit=5000):
        docs.extend(page)
        after = page[-1].seq
    return docs


async def verify_exactly_once(
    store: SQLiteStore, task_id: str, n: int, report: Report, label: str
) -> None:
    """Check every document completed once, by one attempt, with exact counts."""
    docs = await all_checkpoints(store, task_id)
    bad = [
        d.doc_id
        for d in docs
        if d.state is not DocumentState.COMPLETED
        or d.attempts != 1
        or [a.outcome for a in d.attempt_log] != ["completed"]
    ]
    report.check(
        f"{label}: all {n} documents completed by exactly one attempt",
        len(docs) == n and not bad,
        f"documents={len(docs)} not-once={len(bad)} {bad[:3]}",
    )
    counts = await store.counts(task_id)
    try:
        await assert_counts_exact(store, task_id)
        exact = counts.completed == n and counts.open == 0
    except AssertionError:
        exact = False
    report.check(
        f"{label}: counters exact", exact, f"completed={counts.completed} of {n}"
    )


# 1. Throughput


async def raw_baseline(n: int, url: str = AMQP_URL) -> dict[str, float]:
    """Pre-publish ``n`` persistent messages, then time consuming and acking them."""
    prefix = f"tp-bench-{uuid.uuid4().hex[:10]}"
    name = f"{prefix}.raw"
    connection = await aio_pika.connect(url)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        await publisher.declare_queue(name, durable=True)
        started = time.perf_counter()
        for first in range(0, n, RAW_CONFIRM_WINDOW):
            count = min(RAW_CONFIRM_WINDOW, n - first)
            await asyncio.gather(
                *(
                    publisher.default_exchange.publish(
                        aio_pika.Message(
                            RAW_BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        name,
                    )
                    for _ in range(count)
                )
            )
        published = time.perf_counter() - started
        consumed = await raw_consume(connection, name, n)
    finally:
        await connection.close()
        await delete_prefixed(prefix)
    return {
        "messages": n,
        "publish_seconds": published,
        "publish_per_second": n / published,
        "consume_seconds": consumed,
        "per_second": n / consumed,
    }


async def raw_consume(
    connection: aio_pika.abc.AbstractConnection, name: str, n: int
) -> float:
    """Consume ``n`` messages with manual acks; return seconds to the last ack."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=RAW_PREFETCH)
    queue = await channel.declare_queue(name, durable=True)
    done = asyncio.Event()
    acked = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal acked
        await message.ack()
        acked += 1
        if acked == n:
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(on_message, no_ack=False)
    await asyncio.wait_for(done.wait(), timeout=600)
    seconds = time.perf_counter() - started
    await queue.cancel(tag)
    await channel.close()
    return seconds


async def noop_run(
    workdir: Path,
    n: int,
    concurrency: int,
    job_size: int,
    synchronous: str,
    report: Report | None = None,
) -> dict[str, Any]:
    """Run one no-op task of ``n`` documents; return its rate (and check it)."""
    path = workdir / f"noop-{uuid.uuid4().hex[:8]}.db"
    processor = CountingNoop()
    config = supervisor_config(concurrency, job_size)
    async with Rig(path, processor, config, synchronous=synchronous) as rig:
        task_id = await rig.create_task(n)
        await rig.start_supervisor()
        task = await rig.wait_state(task_id, [T.COMPLETED], within=600)
        await rig.stop_supervisor()
        assert task.started_at is not None
        assert task.completed_at is not None
        seconds = (task.completed_at - task.started_at).total_seconds()
        last = max(d.finished_at for d in await all_checkpoints(rig.store, task_id))
        to_last = (last - task.started_at).total_seconds()
        if report is not None:
            label = f"throughput {synchronous} {n}"
            await verify_exactly_once(rig.store, task_id, n, report, label)
            once = len(processor.calls) == n and set(processor.calls.values()) == {1}
            report.check(
                f"{label}: processor called once per document",
                once,
                f"calls={processor.calls.total()}",
            )
    return {
        "documents": n,
        "concurrency": concurrency,
        "job_size": job_size,
        "synchronous": synchronous,
        "seconds": seconds,
        "per_second": n / seconds,
        "seconds_to_last_checkpoint": to_last,
        "per_second_to_last_checkpoint": n / to_last,
    }


async def throughput(workdir: Path, sizes: Sizes, report: Report) -> None:
    """Grid, then the full task at full and normal, between two raw baselines."""
    grid = []
    for concurrency, job_size in GRID:
        run = await noop_run(workdir, sizes.grid_docs, concurrency, job_size, "full")
        progress(
            f"  grid concurrency={concurrency} job_size={job_size}: "
            f"{run['per_second']:.0f} docs/s"
        )
        grid.append(run)
    # Ranked by the time to the last checkpoint: the state figure of a short
    # run is quantised by the sweep that completes the task.
    best = max(grid, key=lambda r: r["per_second_to_last_checkpoint"])
    concurrency, job_size = best["concurrency"], best["job_size"]
    n = sizes.throughput_docs
    raw_before = await raw_baseline(n)
    progress(f"  raw aio-pika: {raw_before['per_second']:.0f} msg/s")
    full = await noop_run(workdir, n, concurrency, job_size, "full", report)
    progress(f"  ours full: {full['per_second']:.0f} docs/s")
    normal = await noop_run(workdir, n, concurrency, job_size, "normal", report)
    progress(f"  ours normal: {normal['per_second']:.0f} docs/s")
    raw_after = await raw_baseline(n)
    progress(f"  raw aio-pika: {raw_after['per_second']:.0f} msg/s")
    raw = max(raw_before["per_second"], raw_after["per_second"])
    ratio_full = full["per_second"] / raw
    ratio_normal = normal["per_second"] / raw
    report.figures["throughput"] = {
        "grid": grid,
        "chosen": {"concurrency": concurrency, "job_size": job_size},
        "raw": [raw_before, raw_after],
        "full": full,
        "normal": normal,
        "ratio_full": ratio_full,
        "ratio_normal": ratio_normal,
    }
    report.target(
        "throughput ours/raw (full)",
        f"{ratio_full:.2f} ({full['per_second']:.0f}/{raw:.0f})",
        f">= {TARGET_RATIO}",
        ratio_full >= TARGET_RATIO,
    )
    report.target(
        "throughput ours/raw (normal)",
        f"{ratio_normal:.2f} ({normal['per_second']:.0f}/{raw:.0f})",
        "(info)",
        None,
    )


# 2. Pause


@dataclass
class PauseCycle:
    """One pause and resume, as measured."""

    latency_ms: float
    seen_paused_ms: float
    resume_ms: float
    starts_after_seen: int
    starts_after_paused_at: int


async def pause_once(
    rig: Rig, processor: PacedProcessor, task_id: str, rng: random.Random
) -> PauseCycle:
    """Pause a running task, check nothing starts while paused, resume it."""
    await asyncio.sleep(rng.uniform(0.010, 0.040))
    published = time.perf_counter()
    at_publish = len(processor.starts)
    await rig.control(task_id, "pause")
    task = await rig.wait_state(task_id, [T.PAUSED], within=30, every=0.005)
    seen = time.perf_counter()
    at_seen = len(processor.starts)
    after = processor.starts[at_publish:at_seen]
    latency = max(after) - published if after else 0.0
    # Hold the task paused: any start from here on breaks invariant 4.
    await asyncio.sleep(0.02)
    at_resume = len(processor.starts)
    assert task.paused_at is not None
    paused_at = task.paused_at.timestamp()
    late = [w for w in processor.wall_starts[at_publish:at_resume] if w > paused_at]
    processor.started.clear()
    resumed = time.perf_counter()
    await rig.control(task_id, "resume")
    await asyncio.wait_for(processor.started.wait(), timeout=30)
    return PauseCycle(
        latency_ms=latency * 1000,
        seen_paused_ms=(seen - published) * 1000,
        resume_ms=(processor.starts[at_resume] - resumed) * 1000,
        starts_after_seen=at_resume - at_seen,
        starts_after_paused_at=len(late),
    )


async def ensure_work(rig: Rig, task_id: str, size: int) -> str:
    """Return a running task with work left: ``task_id``, or a new one."""
    counts = await rig.store.counts(task_id)
    if counts.pending >= 2000:
        return task_id
    progress(f"  task {task_id} nearly done; starting another")
    new_id = await rig.create_task(size, "paced")
    await rig.wait_state(new_id, [T.RUNNING], within=30)
    return new_id


async def pause(workdir: Path, sizes: Sizes, report: Report) -> None:
    """Pause and resume a busy task many times; see the module docstring."""
    processor = PacedProcessor()
    config = supervisor_config(PAUSE_CONCURRENCY, 50)
    rng = random.Random(11)
    cycles: list[PauseCycle] = []
    async with Rig(workdir / "pause.db", processor, config) as rig:
        task_id = await rig.create_task(sizes.pause_task, "paced")
        await rig.start_supervisor()
        await asyncio.wait_for(processor.started.wait(), timeout=30)
        # The first pauses land while the supervisor is still publishing the
        # new task's open documents: measured apart, as a cold start.
        cold = [
            await pause_once(rig, processor, task_id, rng) for _ in range(COLD_PAUSES)
        ]
        for i in range(sizes.pauses):
            task_id = await ensure_work(rig, task_id, sizes.pause_task)
            cycles.append(await pause_once(rig, processor, task_id, rng))
            if (i + 1) % 50 == 0:
                progress(f"  {i + 1} pauses")
    latency = percentiles([c.latency_ms for c in cycles])
    cold_latency = percentiles([c.latency_ms for c in cold])
    seen = percentiles([c.seen_paused_ms for c in cycles])
    resume = percentiles([c.resume_ms for c in cycles])
    after_seen = sum(c.starts_after_seen for c in cold + cycles)
    after_paused_at = sum(c.starts_after_paused_at for c in cold + cycles)
    report.figures["pause"] = {
        "pauses": len(cycles),
        "concurrency": PAUSE_CONCURRENCY,
        "latency_ms": latency,
        "cold_pauses": len(cold),
        "cold_latency_ms": cold_latency,
        "publish_to_seen_paused_ms": seen,
        "resume_to_first_start_ms": resume,
        "starts_after_seen_paused": after_seen,
        "starts_after_paused_at": after_paused_at,
        "documents_started": len(processor.starts),
        "cycles": [c.__dict__ for c in cycles],
    }
    report.check(
        "pause: no document started after the task was seen paused",
        after_seen == 0,
        f"starts={after_seen} over {len(cycles)} pauses",
    )
    report.check(
        "pause: no document started after the stored paused_at",
        after_paused_at == 0,
        f"starts={after_paused_at}",
    )
    report.target(
        "pause latency p99",
        f"{latency['p99']:.1f} ms (p50 {latency['p50']:.1f}, max "
        f"{latency['max']:.1f}, n={latency['n']})",
        f"<= {TARGET_PAUSE_P99_MS:g} ms",
        latency["p99"] <= TARGET_PAUSE_P99_MS,
    )
    report.target(
        "pause latency, cold start",
        f"max {cold_latency['max']:.1f} ms (p50 {cold_latency['p50']:.1f},"
        f" n={cold_latency['n']})",
        "(info)",
        None,
    )


# 3. Cancel


async def wait_until(
    event: asyncio.Event, probe: Callable[[], bool], within: float
) -> None:
    """Wait until ``probe()`` holds, woken by ``event``."""
    async with asyncio.timeout(within):
        while not probe():
            event.clear()
            await event.wait()


async def cancel_once(rig: Rig, processor: SleepingProcessor) -> list[float]:
    """Cancel a task with documents in flight; return each interruption's delay."""
    task_id = await rig.create_task(CANCEL_TASK_SIZE, "sleeping")

    def all_started() -> bool:
        return len(processor.starts.get(task_id, [])) >= CANCEL_CONCURRENCY

    await wait_until(processor.changed, all_started, within=30)
    started = len(processor.starts[task_id])
    published = time.perf_counter()
    await rig.control(task_id, "cancel")

    def all_interrupted() -> bool:
        return len(processor.interrupts.get(task_id, [])) >= started

    await wait_until(processor.changed, all_interrupted, within=30)
    await rig.wait_state(task_id, [T.CANCELLED], within=30, every=0.01)
    counts = await rig.store.counts(task_id)
    if counts.cancelled != CANCEL_TASK_SIZE or counts.open:
        raise AssertionError(f"task {task_id!r} not wholly cancelled: {counts}")
    return [(t - published) * 1000 for t in processor.interrupts[task_id]]


async def cancel(workdir: Path, sizes: Sizes, report: Report) -> None:
    """Cancel many tasks with documents in flight; see the module docstring."""
    processor = SleepingProcessor()
    config = supervisor_config(CANCEL_CONCURRENCY, 50)
    delays: list[float] = []
    broken = ""
    async with Rig(workdir / "cancel.db", processor, config) as rig:
        await rig.start_supervisor()
        for i in range(sizes.cancels):
            try:
                delays.extend(await cancel_once(rig, processor))
            except (AssertionError, TimeoutError) as err:
                broken = f"cancel {i}: {err!r}"
                break
            if (i + 1) % 50 == 0:
                progress(f"  {i + 1} cancels")
    stats = percentiles(delays)
    report.figures["cancel"] = {
        "cancels": sizes.cancels,
        "in_flight_per_task": CANCEL_CONCURRENCY,
        "interruption_ms": stats,
    }
    report.check(
        "cancel: every task cancelled, every in-flight document interrupted",
        not broken and stats["n"] == sizes.cancels * CANCEL_CONCURRENCY,
        broken or f"interrupted={stats['n']}",
    )
    report.target(
        "cancel interruption p99",
        f"{stats['p99']:.1f} ms (p50 {stats['p50']:.1f}, max {stats['max']:.1f},"
        f" n={stats['n']})",
        f"<= {TARGET_CANCEL_P99_MS:g} ms",
        stats["p99"] <= TARGET_CANCEL_P99_MS,
    )


# 4. Resume


async def half_done(path: Path, n: int) -> str:
    """Create a task of ``n`` documents, complete half through the store, pause it.

    Done at ``synchronous=normal`` to save time; the measurement reopens the
    file at ``full``.
    """
    store = SQLiteStore(path, synchronous="normal")
    await store.start()
    try:
        task = await store.create_task(
            NewTask(tenant="bench", type="noop", config=TaskConfig()), documents(n)
        )
        task_id = task.task_id
        await store.transition_task(task_id, T.RUNNING, reason="bench set-up")
        done = 0
        while done < n // 2:
            claims = await store.claim(
                task_id,
                "bench-setup",
                limit=min(RESUME_BATCH, n // 2 - done),
                lease_seconds=600,
            )
            await store.settle(
                task_id,
                [
                    Outcome(
                        doc_id=c.doc_id, fence=c.fence, state=DocumentState.COMPLETED
                    )
                    for c in claims
                ],
            )
            done += len(claims)
        await store.transition_task(task_id, T.PAUSING, reason="bench set-up")
        await store.transition_task(task_id, T.PAUSED, reason="bench set-up")
    finally:
        await store.stop()
    return task_id


class Tracer:
    """Records the statements run on a store's connection, and its VM steps."""

    STEP = 1000  # the progress handler runs every STEP virtual-machine steps

    def __init__(self, end_marker: str) -> None:
        self.statements: list[str] = []
        self.steps = 0
        self.finished = asyncio.Event()
        self._end_marker = end_marker
        self._loop = asyncio.get_running_loop()

    def on_statement(self, sql: str) -> None:
        """Called on the store's thread for every statement."""
        self.statements.append(sql)
        if self._end_marker in sql:
            self._loop.call_soon_threadsafe(self.finished.set)

    def on_progress(self) -> int:
        """Called on the store's thread every STEP steps; 0 lets it go on."""
        self.steps += self.STEP
        return 0

    async def attach(self, store: SQLiteStore) -> None:
        """Start recording on the store's own connection, on its thread."""
        db = store.db
        await store._run(db.set_trace_callback, self.on_statement)
        await store._run(db.set_progress_handler, self.on_progress, self.STEP)

    async def detach(self, store: SQLiteStore) -> None:
        """Stop recording."""
        db = store.db
        await store._run(db.set_trace_callback, None)
        await store._run(db.set_progress_handler, None, 0)


LITERAL = re.compile(r"'(?:[^']|'')*'|-?\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
FULL_SCAN = re.compile(r"\bSCAN (?!json_each)(\w+)(?! USING (?:COVERING )?INDEX)")


def statement_shapes(statements: list[str], path: Path) -> list[dict[str, Any]]:
    """Group traced statements by shape; give each its query plan."""
    shapes: dict[str, list[str]] = {}
    for sql in statements:
        shape = " ".join(LITERAL.sub("?", sql).split())
        shapes.setdefault(shape, []).append(sql)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    try:
        for shape, examples in shapes.items():
            plan: list[str] = []
            if shape.split()[0].upper() in ("SELECT", "UPDATE", "INSERT", "DELETE"):
                # The trace expands an infinite float as Inf, which SQL
                # does not parse back.
                example = re.sub(r"\bInf\b", "9e999", examples[0])
                try:
                    rows = reader.execute(f"EXPLAIN QUERY PLAN {example}").fetchall()
                    plan = [row[3] for row in rows]
                except sqlite3.Error as err:
                    plan = [f"(no plan: {err})"]
            scans = [p for p in plan if FULL_SCAN.search(p)]
            found.append(
                {
                    "statement": shape,
                    "count": len(examples),
                    "plan": plan,
                    "full_scans": scans,
                }
            )
    finally:
        reader.close()
    return found


async def resume(
    workdir: Path, sizes: Sizes, report: Report, concurrency: int, job_size: int
) -> None:
    """Resume a half-done paused task; see the module docstring."""
    n = sizes.resume_docs
    path = workdir / "resume.db"
    progress(f"  setting up a {n}-document task, half completed, paused")
    task_id = await half_done(path, n)
    processor = CountingNoop()
    config = supervisor_config(concurrency, job_size)
    async with Rig(path, processor, config) as rig:
        pending = {
            d.doc_id
            for d in await all_checkpoints(rig.store, task_id)
            if d.state is DocumentState.PENDING
        }
        await rig.start_supervisor()
        await asyncio.sleep(3 * SWEEP_INTERVAL)  # the supervisor is settled
        tracer = Tracer("state = 'retry_wait' AND seq > ")
        await tracer.attach(rig.store)
        published = time.perf_counter()
        await rig.control(task_id, "resume")
        await asyncio.wait_for(processor.started.wait(), timeout=30)
        assert processor.first_start is not None
        latency_ms = (processor.first_start - published) * 1000
        await asyncio.wait_for(tracer.finished.wait(), timeout=60)
        await tracer.detach(rig.store)
        read_all_ms = (time.perf_counter() - published) * 1000
        await rig.wait_state(task_id, [T.COMPLETED], within=600)
        await rig.stop_supervisor()
        await verify_exactly_once(rig.store, task_id, n, report, f"resume {n}")
    shapes = statement_shapes(tracer.statements, path)
    report_resume(
        report, processor, pending, shapes, tracer, latency_ms, read_all_ms, n
    )


def report_resume(
    report: Report,
    processor: CountingNoop,
    pending: set[str],
    shapes: list[dict[str, Any]],
    tracer: Tracer,
    latency_ms: float,
    read_all_ms: float,
    n: int,
) -> None:
    """Record the resume figures and checks."""
    ran = set(processor.calls)
    report.check(
        "resume: the processor ran exactly the documents that were pending, once each",
        ran == pending and set(processor.calls.values()) == {1},
        f"pending={len(pending)} ran={len(ran)} extra={len(ran - pending)} "
        f"missing={len(pending - ran)} calls={processor.calls.total()}",
    )
    scans = [s for s in shapes if s["full_scans"]]
    report.check(
        "resume: no statement scans a table in full while resuming",
        not scans,
        f"{len(shapes)} statement shapes, {len(tracer.statements)} statements; "
        f"scans: {[s['statement'][:80] for s in scans]}",
    )
    report.figures["resume"] = {
        "documents": n,
        "pending_at_resume": len(pending),
        "publish_to_first_start_ms": latency_ms,
        "publish_to_last_open_read_ms": read_all_ms,
        "statements": len(tracer.statements),
        "vm_steps": tracer.steps,
        "vm_steps_per_pending_document": tracer.steps / max(len(pending), 1),
        "shapes": shapes,
    }
    report.target(
        "resume to first start",
        f"{latency_ms:.1f} ms ({n} docs, {len(pending)} pending)",
        f"<= {TARGET_RESUME_MS:g} ms",
        latency_ms <= TARGET_RESUME_MS,
    )


# 5. Memory


def vm_rss_mb() -> float:
    """Return this process's resident set size in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def rss_sampler(every: float = 0.05) -> AsyncIterator[list[float]]:
    """Sample VmRSS every ``every`` seconds while the block runs."""
    samples = [vm_rss_mb()]

    async def sample() -> None:
        while True:
            await asyncio.sleep(every)
            samples.append(vm_rss_mb())

    sampler = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        samples.append(vm_rss_mb())


async def memory_run(workdir: Path, n: int, concurrency: int, job_size: int) -> dict:
    """Run an ``n``-document no-op task; return its memory growth."""
    path = workdir / f"memory-{n}.db"
    processor = CountingNoop()
    config = supervisor_config(concurrency, job_size)
    async with Rig(path, processor, config, synchronous="normal") as rig:
        task_id = await rig.create_task(n)
        gc.collect()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        async with rss_sampler() as samples:
            started = time.perf_counter()
            await rig.start_supervisor()
            await rig.wait_state(task_id, [T.COMPLETED], within=900)
            await rig.stop_supervisor()
            seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        processor.calls.clear()
    return {
        "documents": n,
        "seconds": seconds,
        "tracemalloc_peak_mb": (peak - base) / 2**20,
        "rss_start_mb": samples[0],
        "rss_growth_mb": max(samples) - samples[0],
    }


async def memory(
    workdir: Path, sizes: Sizes, report: Report, concurrency: int, job_size: int
) -> None:
    """Compare the memory of a small and a large task; see the module docstring."""
    small = await memory_run(workdir, sizes.memory_small, concurrency, job_size)
    progress(f"  {small}")
    large = await memory_run(workdir, sizes.memory_large, concurrency, job_size)
    progress(f"  {large}")
    peak = large["tracemalloc_peak_mb"] - small["tracemalloc_peak_mb"]
    rss = large["rss_growth_mb"] - small["rss_growth_mb"]
    report.figures["memory"] = {
        "small": small,
        "large": large,
        "tracemalloc_peak_difference_mb": peak,
        "rss_growth_difference_mb": rss,
    }
    met = max(peak, rss) <= TARGET_MEMORY_MB
    report.target(
        "memory, large - small task",
        f"tracemalloc peak {peak:+.1f} MB, RSS growth {rss:+.1f} MB",
        f"<= {TARGET_MEMORY_MB:g} MB",
        met,
    )


# Output


def ms(stats: dict[str, float]) -> str:
    """Format percentiles in milliseconds."""
    return (
        f"p50 {stats['p50']:7.1f}  p99 {stats['p99']:7.1f}  max {stats['max']:7.1f}"
        f"  (n={stats['n']})"
    )


def print_throughput(fig: dict[str, Any]) -> None:
    """Print the throughput figures."""
    print("\n## throughput: no-op documents, checkpoints on, SQLite, RabbitMQ")
    print(f"grid ({fig['grid'][0]['documents']} documents, synchronous=full):")
    print("  concurrency  job_size   docs/s (state)   docs/s (last checkpoint)")
    for run in fig["grid"]:
        print(
            f"  {run['concurrency']:>11}  {run['job_size']:>8}"
            f"  {run['per_second']:>15.0f}"
            f"  {run['per_second_to_last_checkpoint']:>24.0f}"
        )
    chosen = fig["chosen"]
    print(
        f"chosen: concurrency={chosen['concurrency']} job_size={chosen['job_size']}, "
        f"sweep_interval={SWEEP_INTERVAL} s"
    )
    for raw in fig["raw"]:
        print(
            f"raw aio-pika, {raw['messages']} x 200 B persistent, classic durable: "
            f"publish {raw['publish_per_second']:.0f} msg/s, consume+ack "
            f"(prefetch {RAW_PREFETCH}) {raw['per_second']:.0f} msg/s"
        )
    for key in ("full", "normal"):
        run = fig[key]
        print(
            f"ours synchronous={key}: {run['documents']} documents in "
            f"{run['seconds']:.2f} s = {run['per_second']:.0f} docs/s "
            f"(to the last checkpoint {run['per_second_to_last_checkpoint']:.0f})"
            f"; ours/raw {fig['ratio_' + key]:.2f}"
        )


def print_pause(fig: dict[str, Any]) -> None:
    """Print the pause figures."""
    print(
        f"\n## pause: {fig['pauses']} pauses, documents of 2-5 ms, "
        f"concurrency {fig['concurrency']}"
    )
    print(f"last start after publish (ms):  {ms(fig['latency_ms'])}")
    print(
        f"  the same, {fig['cold_pauses']} cold pauses:  {ms(fig['cold_latency_ms'])}"
    )
    print(f"publish to seen paused (ms):    {ms(fig['publish_to_seen_paused_ms'])}")
    print(f"resume to first start (ms):     {ms(fig['resume_to_first_start_ms'])}")
    print(
        f"starts after seen paused: {fig['starts_after_seen_paused']}; after the "
        f"stored paused_at: {fig['starts_after_paused_at']}; documents started "
        f"in all: {fig['documents_started']}"
    )


def print_cancel(fig: dict[str, Any]) -> None:
    """Print the cancel figures."""
    print(
        f"\n## cancel: {fig['cancels']} tasks, {fig['in_flight_per_task']} "
        "documents in flight each"
    )
    print(f"publish to interruption (ms):   {ms(fig['interruption_ms'])}")


def abridged(sql: str, width: int = 150) -> str:
    """Shorten a statement, keeping its head and its WHERE clause."""
    if len(sql) <= width:
        return sql
    head, where, tail = sql.partition(" WHERE ")
    if not where:
        return sql[: width - 3] + "..."
    return f"{head[:50]} ...{where}{tail}"[: width + 60]


def print_resume(fig: dict[str, Any]) -> None:
    """Print the resume figures and the statements it ran."""
    print(
        f"\n## resume: {fig['documents']} documents, {fig['pending_at_resume']} "
        "pending, paused with an empty job queue"
    )
    print(f"publish to first start: {fig['publish_to_first_start_ms']:.1f} ms")
    print(
        f"publish to the last open document read: "
        f"{fig['publish_to_last_open_read_ms']:.0f} ms; {fig['statements']} "
        f"statements, {fig['vm_steps']} VM steps "
        f"({fig['vm_steps_per_pending_document']:.1f} per pending document)"
    )
    print("statements run meanwhile (literals as ?), with their query plans:")
    for shape in sorted(fig["shapes"], key=lambda s: -s["count"]):
        flag = "  FULL SCAN" if shape["full_scans"] else ""
        print(f"  {shape['count']:>5} x {abridged(shape['statement'])}{flag}")
        for line in shape["plan"]:
            print(f"            {line}")


def print_memory(fig: dict[str, Any]) -> None:
    """Print the memory figures."""
    print("\n## memory: supervisor running a no-op task (synchronous=normal)")
    print("  documents   seconds   tracemalloc peak MB   RSS growth MB")
    for key in ("small", "large"):
        run = fig[key]
        print(
            f"  {run['documents']:>9}  {run['seconds']:>8.1f}  "
            f"{run['tracemalloc_peak_mb']:>20.1f}  {run['rss_growth_mb']:>14.1f}"
        )
    print(
        f"difference: tracemalloc peak {fig['tracemalloc_peak_difference_mb']:+.1f} "
        f"MB, RSS growth {fig['rss_growth_difference_mb']:+.1f} MB"
    )


def print_summary(report: Report) -> None:
    """Print the table of figures against targets, and the checks."""
    print("\n## summary")
    width = max((len(s[0]) for s in report.summary), default=10)
    for name, value, target, met in report.summary:
        status = "" if met is None else ("met" if met else "MISSED")
        print(f"  {name:<{width}}  {value:<56}  {target:<10}  {status}")
    print("\n## warnings and errors logged meanwhile, by measurement")
    for name, seen in report.warnings.items():
        print(f"  {name}: {'none' if not seen else ''}")
        for message, count in sorted(seen.items(), key=lambda kv: -kv[1]):
            print(f"    {count:>5} x {message}")
    print("\n## invariant checks")
    for name, ok, detail in report.checks:
        print(f"  {'ok    ' if ok else 'FAILED'}  {name}  [{detail}]")


PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "throughput": print_throughput,
    "pause": print_pause,
    "cancel": print_cancel,
    "resume": print_resume,
    "memory": print_memory,
}


# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.actors", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this")
    return parser.parse_args(argv)


def describe(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """Return the settings of this run, for the output and the JSON."""
    return {
        "mode": "quick" if args.quick else "full",
        "sizes": sizes.__dict__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aio_pika": aio_pika.__version__,
        "cpus": os.cpu_count(),
        "amqp": AMQP_URL.split("@")[-1],
    }


async def run(args: argparse.Namespace, report: Report) -> None:
    """Run the chosen measurements in order."""
    tally = WarningTally()
    logging.getLogger().addHandler(tally)
    sizes = QUICK if args.quick else FULL
    chosen = args.only or list(NAMES)
    concurrency, job_size = 64, 50
    with tempfile.TemporaryDirectory(prefix="tp-bench-actors-") as tmp:
        workdir = Path(tmp)
        for name in NAMES:
            if name not in chosen:
                continue
            progress(f"{name} ...")
            tally.seen.clear()
            started = time.perf_counter()
            if name == "throughput":
                await throughput(workdir, sizes, report)
                best = report.figures["throughput"]["chosen"]
                concurrency, job_size = best["concurrency"], best["job_size"]
            elif name == "pause":
                await pause(workdir, sizes, report)
            elif name == "cancel":
                await cancel(workdir, sizes, report)
            elif name == "resume":
                await resume(workdir, sizes, report, concurrency, job_size)
            else:
                await memory(workdir, sizes, report, concurrency, job_size)
            report.warnings[name] = dict(tally.seen)
            progress(f"{name} done in {time.perf_counter() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return 1 when an invariant check failed."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    sizes = QUICK if args.quick else FULL
    report = Report()
    report.figures["settings"] = describe(args, sizes)
    started = time.perf_counter()
    asyncio.run(run(args, report))
    elapsed = time.perf_counter() - started
    settings = report.figures["settings"]
    settings["seconds"] = elapsed
    print(f"# bench.actors ({settings['mode']}, {elapsed:.0f} s)")
    print(json.dumps({k: v for k, v in settings.items() if k != "seconds"}))
    for name in NAMES:
        if name in report.figures:
            PRINTERS[name](report.figures[name])
    print_summary(report)
    if args.json is not None:
        report.figures["checks"] = report.checks
        report.figures["summary"] = report.summary
        report.figures["warnings"] = report.warnings
        args.json.write_text(json.dumps(report.figures, indent=2, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
