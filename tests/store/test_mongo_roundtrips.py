"""MongoStore against a mongoeco server: round trips per document, and behaviour.

The server is started with the project's launcher (scripts/mongoeco_server.py)
under the Python 3.13 interpreter named by ``TASKPOINT_MONGOECO_PYTHON``. Cost is
measured in commands sent, counted by a PyMongo command listener, never in time:
mongoeco is far slower than MongoDB.
"""

from __future__ import annotations

import asyncio
import gc
import os
import selectors
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymongo import monitoring

from store import mongo as mongo_module
from store.errors import (
    DocumentNotFound,
    DuplicateDocument,
    SchemaVersionError,
    StaleFence,
    StoreUnavailable,
    TaskNotFound,
    TransitionRefused,
)
from store.models import DocumentError, DocumentInput, NewTask, Outcome, TokenUsage
from store.mongo import MongoStore
from store.states import DocumentState, TaskState

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "scripts" / "mongoeco_server.py"
PYTHON = os.environ.get("TASKPOINT_MONGOECO_PYTHON", "/tmp/mongoeco-venv/bin/python")
SLOW_CLIENT = {
    "serverSelectionTimeoutMS": 60000,
    "connectTimeoutMS": 60000,
    "socketTimeoutMS": 120000,
}
# Connection upkeep, not work: PyMongo sends these on its own schedule.
NOT_ROUND_TRIPS = frozenset({"hello", "ismaster", "isMaster", "endSessions"})
T0 = datetime(2030, 1, 1, tzinfo=UTC)

D = DocumentState
T = TaskState


class CommandCounter(monitoring.CommandListener):
    """Records the name of every command the client starts."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in NOT_ROUND_TRIPS:
            self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        self.commands.clear()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """Return the launcher's first stdout line, or fail at the deadline."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                return proc.stdout.readline()
            if proc.poll() is not None:
                break
    proc.kill()
    pytest.fail(f"mongoeco launcher did not report listening (exit {proc.poll()})")


@pytest.fixture(scope="module")
def mongo_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [PYTHON, str(LAUNCHER), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        cwd="/",
    )
    try:
        line = _wait_for_line(proc, time.monotonic() + 60)
        assert line.strip() == f"listening on 127.0.0.1:{port}"
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def counter() -> CommandCounter:
    return CommandCounter()


@pytest.fixture
async def store(mongo_url: str, counter: CommandCounter) -> AsyncIterator[MongoStore]:
    options = {**SLOW_CLIENT, "event_listeners": [counter]}
    name = f"tp_{uuid.uuid4().hex[:12]}"
    st = MongoStore(mongo_url, name, client_options=options)
    await st.start()
    yield st
    client = st._client
    await st.stop()
    if client is None:
        return
    # Drop through a fresh client: the store's own is closed.
    from pymongo import AsyncMongoClient

    cleaner: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        mongo_url, **SLOW_CLIENT
    )
    await cleaner.drop_database(name)
    await cleaner.close()


def _docs(n: int, prefix: str = "d") -> list[DocumentInput]:
    return [
        DocumentInput(doc_id=f"{prefix}{i:04d}", text=f"text {i}") for i in range(n)
    ]


async def _task(store: MongoStore, n: int, tenant: str = "acme") -> str:
    task = await store.create_task(NewTask(tenant=tenant, type="noop"), _docs(n))
    return task.task_id


def _done(doc_id: str, fence: int, **kw: object) -> Outcome:
    return Outcome(doc_id=doc_id, fence=fence, state=D.COMPLETED, **kw)  # type: ignore[arg-type]


# Round trips


async def test_plain_path_costs_at_most_three_round_trips(
    store: MongoStore, counter: CommandCounter
) -> None:
    task_id = await _task(store, 3)
    counter.reset()

    claims = await store.claim(task_id, "w1", limit=1, lease_seconds=60)
    results = await store.settle(task_id, [_done(claims[0].doc_id, claims[0].fence)])

    assert results == ["accepted"]
    print(f"plain path commands: {counter.commands}")
    assert len(counter.commands) <= 3, counter.commands
    counts = await store.counts(task_id)
    assert (counts.completed, counts.pending, counts.running) == (1, 2, 0)


async def test_batched_path_costs_at_most_a_tenth_per_document(
    store: MongoStore, counter: CommandCounter
) -> None:
    n = 100
    task_id = await _task(store, n)
    counter.reset()

    claims = await store.claim(task_id, "w1", limit=n, lease_seconds=60)
    outcomes = [_done(c.doc_id, c.fence) for c in claims]
    results = await store.settle(task_id, outcomes)

    assert len(claims) == n
    assert results == ["accepted"] * n
    per_doc = len(counter.commands) / n
    print(f"batched path commands: {counter.commands} = {per_doc:.3f} per document")
    assert per_doc <= 0.1, counter.commands
    counts = await store.counts(task_id)
    assert counts.completed == n
    assert counts.open == 0


# Tasks


async def test_create_get_and_list_tasks(store: MongoStore) -> None:
    async def stream() -> AsyncIterator[DocumentInput]:
        for doc in _docs(7):
            yield doc

    new = NewTask(tenant="acme", type="noop")
    task = await store.create_task(new, stream(), batch_size=3)
    other = await _task(store, 1, tenant="globex")

    assert task.sealed
    assert task.total_documents == 7
    assert task.state is T.PENDING
    assert (await store.get_task(task.task_id, "acme")).task_id == task.task_id
    with pytest.raises(TaskNotFound):
        await store.get_task(task.task_id, "globex")
    with pytest.raises(TaskNotFound):
        await store.get_task("missing")
    assert [t.task_id for t in await store.list_tasks("acme")] == [task.task_id]
    assert [t.task_id for t in await store.list_tasks()] == [other, task.task_id]
    assert await store.list_tasks(states=[T.RUNNING]) == []
    page = await store.page_documents(task.task_id, limit=10)
    assert [d.seq for d in page] == list(range(7))
    contents = await store.load_contents(task.task_id, ["d0000", "d0006", "nope"])
    assert contents["d0006"].text == "text 6"
    assert set(contents) == {"d0000", "d0006"}


@pytest.mark.parametrize("batch_size", [10, 2])
async def test_duplicate_document_leaves_nothing(
    store: MongoStore, batch_size: int
) -> None:
    docs = [*_docs(3), DocumentInput(doc_id="d0001", uri="s3://x")]
    new = NewTask(tenant="acme", type="noop")

    with pytest.raises(DuplicateDocument) as info:
        await store.create_task(new, docs, batch_size=batch_size)

    assert info.value.doc_id == "d0001"
    with pytest.raises(TaskNotFound):
        await store.get_task(new.task_id)
    assert await store.page_documents(new.task_id) == []
    assert await store.load_contents(new.task_id, ["d0000"]) == {}


async def test_transitions_timestamps_and_history(store: MongoStore) -> None:
    task_id = await _task(store, 1)

    running = await store.transition_task(task_id, T.RUNNING, now=T0, request_id="r1")
    pausing = await store.transition_task(task_id, T.PAUSING, reason="budget")
    paused = await store.transition_task(task_id, T.PAUSED)
    resumed = await store.transition_task(task_id, T.RUNNING, expected=[T.PAUSED])

    assert running.started_at == T0
    assert pausing.reason == "budget"
    assert paused.reason == "budget"
    assert paused.paused_at is not None
    assert resumed.reason is None
    assert resumed.resumed_at is not None
    assert resumed.started_at == T0
    assert resumed.version == 5
    with pytest.raises(TransitionRefused):
        await store.transition_task(task_id, T.PAUSED)
    with pytest.raises(TransitionRefused):
        await store.transition_task(task_id, T.PAUSING, expected=[T.PENDING])
    with pytest.raises(TaskNotFound):
        await store.transition_task("missing", T.RUNNING)
    rejected = await store.record_rejection(task_id, T.PAUSED, reason="not pausing")
    assert (rejected.seq, rejected.accepted) == (6, False)
    history = await store.history(task_id)
    assert [h.seq for h in history] == [1, 2, 3, 4, 5, 6]
    assert (history[0].from_state, history[0].to_state) == (None, T.PENDING)
    assert history[1].request_id == "r1"
    assert history[1].from_state is T.PENDING
    assert history[1].at == T0
    assert [h.seq for h in await store.history(task_id, since=4)] == [5, 6]
    cancelled = await store.transition_task(task_id, T.CANCELLING)
    assert cancelled.cancelled_at is None
    final = await store.transition_task(task_id, T.CANCELLED)
    assert final.cancelled_at is not None


async def test_concurrent_transitions_have_one_winner(store: MongoStore) -> None:
    task_id = await _task(store, 1)

    attempts = [store.transition_task(task_id, T.RUNNING) for _ in range(10)]
    results = await asyncio.gather(*attempts, return_exceptions=True)

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        isinstance(r, TransitionRefused)
        for r in results
        if isinstance(r, BaseException)
    )
    assert [h.seq for h in await store.history(task_id)] == [1, 2]


# Work path


async def test_twenty_claimers_one_document_one_winner(store: MongoStore) -> None:
    task_id = await _task(store, 1)

    claims = await asyncio.gather(
        *(store.claim(task_id, f"w{i}", lease_seconds=30) for i in range(20))
    )

    won = [c for batch in claims for c in batch]
    assert len(won) == 1
    assert (won[0].fence, won[0].attempt) == (1, 1)


async def test_batched_claims_never_overlap(store: MongoStore) -> None:
    task_id = await _task(store, 30)

    batches = await asyncio.gather(
        *(store.claim(task_id, f"w{i}", limit=10, lease_seconds=30) for i in range(5))
    )

    ids = [c.doc_id for batch in batches for c in batch]
    assert len(ids) == len(set(ids)) == 30
    for batch in batches:
        for claim in batch:
            doc = await store.get_document(task_id, claim.doc_id)
            assert doc.fence == claim.fence
            assert doc.state is D.RUNNING


async def test_settle_accepts_then_duplicate_then_stale(store: MongoStore) -> None:
    task_id = await _task(store, 2)
    [claim] = await store.claim(task_id, "w1", lease_seconds=30, now=T0)
    outcome = _done(
        claim.doc_id, claim.fence, tokens=TokenUsage(prompt=5, completion=2)
    )
    stale = _done(claim.doc_id, claim.fence - 1)

    first = await store.settle(task_id, [outcome], now=T0)
    again = await store.settle(task_id, [outcome, stale], now=T0)

    assert first == ["accepted"]
    assert again == ["duplicate", "stale"]
    task = await store.get_task(task_id)
    assert task.tokens == TokenUsage(prompt=5, completion=2)
    assert task.settled.completed == 1
    doc = await store.get_document(task_id, claim.doc_id)
    assert doc.state is D.COMPLETED
    assert doc.finished_at == T0
    assert doc.lease_owner is None
    [record] = doc.attempt_log
    assert (record.attempt, record.fence, record.owner) == (1, 1, "w1")
    assert (record.outcome, record.started_at) == ("completed", T0)


async def test_retry_wait_interrupt_and_claim_order(store: MongoStore) -> None:
    task_id = await _task(store, 3)
    claims = await store.claim(task_id, "w1", limit=2, lease_seconds=30, now=T0)
    later = T0 + timedelta(seconds=10)
    error = DocumentError(type="Timeout", message="$provider slow")
    outcomes = [
        Outcome(
            doc_id=claims[0].doc_id,
            fence=claims[0].fence,
            state=D.PENDING,
            tokens=TokenUsage(prompt=1),
        ),
        Outcome(
            doc_id=claims[1].doc_id,
            fence=claims[1].fence,
            state=D.RETRY_WAIT,
            error=error,
            next_attempt_at=later,
            tokens=TokenUsage(completion=3),
        ),
    ]

    assert await store.settle(task_id, outcomes, now=T0) == ["accepted", "accepted"]

    interrupted = await store.get_document(task_id, "d0000")
    assert (interrupted.state, interrupted.attempts) == (D.PENDING, 0)
    assert interrupted.attempt_log[0].outcome == "interrupted"
    waiting = await store.get_document(task_id, "d0001")
    assert waiting.error == error
    assert await store.next_retry_at(task_id) == later
    counts = await store.counts(task_id)
    assert (counts.pending, counts.retry_wait, counts.completed) == (2, 1, 0)
    assert (await store.get_task(task_id)).tokens == TokenUsage(prompt=1, completion=3)
    early = await store.claim(task_id, "w2", lease_seconds=30, now=T0)
    assert early[0].doc_id == "d0000"
    due = await store.claim(task_id, "w2", limit=5, lease_seconds=30, now=later)
    assert [c.doc_id for c in due] == ["d0001", "d0002"]
    assert (due[0].attempt, due[0].fence) == (2, 2)


async def test_claim_named_documents_and_due_retries(
    store: MongoStore, counter: CommandCounter
) -> None:
    task_id = await _task(store, 5)
    [first] = await store.claim(task_id, "w", doc_ids=["d0002"], lease_seconds=30)
    later = T0 + timedelta(seconds=5)
    retry = Outcome(
        doc_id="d0002", fence=first.fence, state=D.RETRY_WAIT, next_attempt_at=later
    )
    await store.settle(task_id, [retry], now=T0)
    counter.reset()

    one = await store.claim(
        task_id, "w", doc_ids=["d0002", "d0004"], lease_seconds=30, now=T0
    )

    assert [c.doc_id for c in one] == ["d0004"]
    assert counter.commands == ["findAndModify"]
    assert await store.due_retries(task_id, limit=5, now=T0) == []
    assert await store.due_retries(task_id, limit=5, now=later) == ["d0002"]
    named = ["d0002", "d0004", "nope", "d0001"]
    many = await store.claim(
        task_id, "w", doc_ids=named, limit=5, lease_seconds=30, now=later
    )
    assert [c.doc_id for c in many] == ["d0002", "d0001"]
    assert await store.claim(task_id, "w", doc_ids=[], lease_seconds=30) == []


async def test_extend_leases(store: MongoStore) -> None:
    task_id = await _task(store, 2)
    claims = await store.claim(task_id, "w1", limit=2, lease_seconds=5, now=T0)
    leases = [(claims[0].doc_id, claims[0].fence), (claims[1].doc_id, 99)]

    extended = await store.extend_leases(task_id, leases, lease_seconds=60, now=T0)

    assert extended == [claims[0].doc_id]
    doc = await store.get_document(task_id, claims[0].doc_id)
    assert doc.lease_expires_at == T0 + timedelta(seconds=60)
    assert await store.extend_leases(task_id, leases[:1], lease_seconds=1) == [
        claims[0].doc_id
    ]


async def test_results_are_fenced(store: MongoStore) -> None:
    task_id = await _task(store, 1)

    ref = await store.put_result(task_id, "d0000", 2, {"summary": "a"})
    again = await store.put_result(task_id, "d0000", 3, {"summary": "b"})

    assert ref == again
    assert await store.get_result(task_id, "d0000") == {"summary": "b"}
    with pytest.raises(StaleFence):
        await store.put_result(task_id, "d0000", 2, {"summary": "old"})
    assert await store.get_result(task_id, "d0000") == {"summary": "b"}
    assert await store.get_result(task_id, "d0001") is None


# Control path


async def test_reclaim_releases_or_fails_expired_leases(store: MongoStore) -> None:
    task_id = await _task(store, 3)
    claims = await store.claim(task_id, "w1", limit=2, lease_seconds=10, now=T0)
    await store.settle(
        task_id, [Outcome(doc_id="d0001", fence=claims[1].fence, state=D.PENDING)]
    )
    await store.claim(task_id, "w1", limit=1, lease_seconds=10, now=T0)
    await store.claim(task_id, "w2", limit=1, lease_seconds=100, now=T0)

    report = await store.reclaim_expired(
        task_id, max_attempts=1, now=T0 + timedelta(seconds=20)
    )

    assert sorted(report.failed) == ["d0000", "d0001"]
    assert report.released == ()
    failed = await store.get_document(task_id, "d0000")
    assert failed.error is not None
    assert failed.error.type == "WorkerLost"
    assert failed.attempt_log[-1].outcome == "lost"
    counts = await store.counts(task_id)
    assert (counts.failed, counts.running) == (2, 1)
    again = await store.reclaim_expired(
        task_id, max_attempts=5, now=T0 + timedelta(seconds=200)
    )
    assert again.released == ("d0002",)


async def test_reset_cancel_iterate_and_recount(store: MongoStore) -> None:
    task_id = await _task(store, 6)
    claims = await store.claim(task_id, "w1", limit=2, lease_seconds=30)
    failed = [Outcome(doc_id=c.doc_id, fence=c.fence, state=D.FAILED) for c in claims]
    await store.settle(task_id, failed)

    batches = [b async for b in store.iter_open(task_id, batch_size=3)]
    reset = await store.reset_failed(task_id, ["d0000"])

    assert batches == [["d0002", "d0003", "d0004"], ["d0005"]]
    assert reset == 1
    assert (await store.get_document(task_id, "d0000")).attempts == 0
    assert await store.cancel_open(task_id) == 5
    counts = await store.counts(task_id)
    assert (counts.cancelled, counts.failed, counts.pending) == (5, 1, 0)
    assert [b async for b in store.iter_open(task_id)] == []
    tasks = store._database["tasks"]
    await tasks.update_one({"_id": task_id}, {"$set": {"settled.cancelled": 0}})
    rebuilt = await store.recount(task_id)
    assert rebuilt == counts
    assert await store.counts(task_id) == counts
    assert await store.reset_failed(task_id) == 1
    with pytest.raises(DocumentNotFound):
        await store.get_document(task_id, "nope")


# Lifecycle


async def test_schema_newer_is_refused_and_older_is_migrated(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = store._database["meta"]
    await meta.update_one({"_id": "schema"}, {"$set": {"version": 99}})
    with pytest.raises(SchemaVersionError):
        await store.start()

    ran: list[int] = []

    async def step(db: object) -> None:
        ran.append(1)

    await meta.update_one({"_id": "schema"}, {"$set": {"version": 1}})
    monkeypatch.setattr(mongo_module, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(mongo_module, "MIGRATIONS", {1: step})
    await store.start()

    assert ran == [1]
    assert (await meta.find_one({"_id": "schema"}) or {})["version"] == 2


# PyMongo's async monitor can drop a socket it was still connecting when the
# client closes; collect it here so the warning lands on this test only.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_unreachable_server_is_store_unavailable() -> None:
    url = f"mongodb://127.0.0.1:{_free_port()}/?directConnection=true"
    st = MongoStore(url, client_options={"serverSelectionTimeoutMS": 200})

    with pytest.raises(StoreUnavailable):
        await st.start()
    await st.stop()
    await asyncio.sleep(0.1)
    gc.collect()
