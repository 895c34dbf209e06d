"""The contract every checkpoint store keeps, run against SQLite and MongoDB."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from store.base import CheckpointStore
from store.errors import (
    DocumentNotFound,
    DuplicateDocument,
    StaleFence,
    TaskNotFound,
    TransitionRefused,
)
from store.models import (
    DocumentError,
    DocumentInput,
    NewTask,
    Outcome,
    TaskConfig,
    TokenUsage,
    utcnow,
)
from store.states import DocumentState as D
from store.states import TaskState as T
from tests.store.invariants import assert_counts_exact

LEASE = 60.0


def docs(n: int, prefix: str = "d") -> list[DocumentInput]:
    return [
        DocumentInput(doc_id=f"{prefix}{i:05d}", text=f"text {i}") for i in range(n)
    ]


async def make_task(store: CheckpointStore, n: int, **config: object) -> str:
    task = await store.create_task(
        NewTask(tenant="acme", type="noop", config=TaskConfig(**config)), docs(n)
    )
    return task.task_id


def done(claim, state=D.COMPLETED, prompt=3, completion=2, **kw) -> Outcome:
    return Outcome(
        doc_id=claim.doc_id,
        fence=claim.fence,
        state=state,
        tokens=TokenUsage(prompt=prompt, completion=completion),
        **kw,
    )


async def test_create_get_and_list_by_tenant(store):
    task_id = await make_task(store, 5)
    other = await store.create_task(NewTask(tenant="other", type="noop"), docs(2))

    task = await store.get_task(task_id, tenant="acme")
    assert (task.state, task.total_documents, task.sealed) == (T.PENDING, 5, True)
    with pytest.raises(TaskNotFound):
        await store.get_task(task_id, tenant="other")
    with pytest.raises(TaskNotFound):
        await store.get_task("nope")
    assert [t.task_id for t in await store.list_tasks("acme")] == [task_id]
    assert [t.task_id for t in await store.list_tasks("other")] == [other.task_id]
    assert [t.task_id for t in await store.list_tasks(states=[T.RUNNING])] == []
    counts = await store.counts(task_id)
    assert (counts.total, counts.pending) == (5, 5)
    contents = await store.load_contents(task_id, ["d00001", "d00003"])
    assert contents["d00003"].text == "text 3"
    history = await store.history(task_id)
    assert [(h.from_state, h.to_state) for h in history] == [(None, T.PENDING)]


async def test_duplicate_document_ids_leave_nothing_behind(store):
    batch = [*docs(3), DocumentInput(doc_id="d00001", text="again")]
    new = NewTask(tenant="acme", type="noop")
    with pytest.raises(DuplicateDocument, match="d00001"):
        await store.create_task(new, batch, batch_size=2)
    with pytest.raises(TaskNotFound):
        await store.get_task(new.task_id)


async def test_async_document_stream_is_stored_in_batches(store):
    async def stream():
        for doc in docs(25):
            yield doc

    task = await store.create_task(
        NewTask(tenant="a", type="noop"), stream(), batch_size=7
    )
    assert task.total_documents == 25
    page = await store.page_documents(task.task_id, after=20)
    assert [d.doc_id for d in page] == [f"d{i:05d}" for i in range(21, 25)]


async def test_twenty_concurrent_claimers_of_one_document_one_wins(store_factory):
    first = await store_factory()
    task_id = await make_task(first, 1)
    stores = [first] + [await store_factory() for _ in range(4)]

    claims = await asyncio.gather(
        *(
            stores[i % len(stores)].claim(task_id, f"w{i}", lease_seconds=LEASE)
            for i in range(20)
        )
    )

    winners = [c for c in claims if c]
    assert len(winners) == 1
    assert winners[0][0].fence == 1
    assert winners[0][0].attempt == 1
    counts = await first.counts(task_id)
    assert (counts.running, counts.pending) == (1, 0)


async def test_batch_claims_never_hand_a_document_to_two_claimers(store_factory):
    first = await store_factory()
    task_id = await make_task(first, 120)
    stores = [first] + [await store_factory() for _ in range(3)]

    async def drain(store, owner):
        got = []
        while batch := await store.claim(task_id, owner, limit=7, lease_seconds=LEASE):
            got.extend(c.doc_id for c in batch)
        return got

    results = await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate(stores)))

    everything = [doc_id for got in results for doc_id in got]
    assert len(everything) == len(set(everything)) == 120
    assert (await first.counts(task_id)).running == 120


async def test_stale_fence_is_refused_everywhere(store):
    task_id = await make_task(store, 1, max_attempts=5)
    [old] = await store.claim(task_id, "w1", lease_seconds=1)
    later = utcnow() + timedelta(seconds=5)
    report = await store.reclaim_expired(task_id, max_attempts=5, now=later)
    assert report.released == (old.doc_id,)
    [new] = await store.claim(task_id, "w2", lease_seconds=LEASE, now=later)
    assert new.fence > old.fence

    assert (
        await store.extend_leases(task_id, [(old.doc_id, old.fence)], lease_seconds=9)
        == []
    )
    assert await store.settle(task_id, [done(old)]) == ["stale"]
    await store.put_result(task_id, new.doc_id, new.fence, {"by": "new"})
    with pytest.raises(StaleFence):
        await store.put_result(task_id, old.doc_id, old.fence, {"by": "old"})
    assert await store.settle(task_id, [done(new)]) == ["accepted"]
    assert await store.get_result(task_id, new.doc_id) == {"by": "new"}
    doc = await store.get_document(task_id, new.doc_id)
    assert (doc.state, doc.fence, doc.attempts) == (D.COMPLETED, new.fence, 2)
    assert [a.outcome for a in doc.attempt_log] == ["lost", "completed"]
    await assert_counts_exact(store, task_id)


async def test_completion_is_idempotent(store):
    task_id = await make_task(store, 2)
    claims = await store.claim(task_id, "w", limit=2, lease_seconds=LEASE)
    outcomes = [done(c) for c in claims]

    assert await store.settle(task_id, outcomes) == ["accepted", "accepted"]
    assert await store.settle(task_id, outcomes) == ["duplicate", "duplicate"]

    task = await store.get_task(task_id)
    assert task.settled.completed == 2
    assert task.tokens == TokenUsage(prompt=6, completion=4)
    assert (await store.counts(task_id)).completed == 2
    await assert_counts_exact(store, task_id)


async def test_every_outcome_moves_documents_and_counters(store):
    task_id = await make_task(store, 6, max_attempts=2)
    c = await store.claim(task_id, "w", limit=5, lease_seconds=LEASE)
    soon = utcnow() + timedelta(seconds=30)
    err = DocumentError(type="Timeout", message="provider timed out")
    results = await store.settle(
        task_id,
        [
            done(c[0]),
            done(c[1], D.FAILED, error=err),
            done(c[2], D.RETRY_WAIT, error=err, next_attempt_at=soon),
            done(c[3], D.CANCELLED),
            done(c[4], D.PENDING, prompt=0, completion=0),
        ],
    )
    assert results == ["accepted"] * 5

    counts = await store.counts(task_id)
    assert counts.model_dump() == {
        "total": 6,
        "pending": 2,
        "running": 0,
        "retry_wait": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert (await store.get_document(task_id, c[4].doc_id)).attempts == 0
    assert await store.next_retry_at(task_id) == soon
    waiting = await store.get_document(task_id, c[2].doc_id)
    assert waiting.error == err
    assert waiting.next_attempt_at == soon
    # A waiting document is not claimable before its time, and first after it.
    early = await store.claim(task_id, "w", limit=5, lease_seconds=LEASE)
    assert c[2].doc_id not in {x.doc_id for x in early}
    await store.settle(task_id, [done(x, D.PENDING, 0, 0) for x in early])
    later = await store.claim(
        task_id, "w", limit=1, lease_seconds=LEASE, now=soon + timedelta(seconds=1)
    )
    assert [x.doc_id for x in later] == [c[2].doc_id]
    assert later[0].attempt == 2
    await store.settle(task_id, [done(later[0], prompt=1, completion=1)])
    await assert_counts_exact(store, task_id)
    task = await store.get_task(task_id)
    assert task.tokens == TokenUsage(prompt=13, completion=9)


async def test_expired_leases_are_reclaimed_and_repeat_killers_fail(store):
    task_id = await make_task(store, 3, max_attempts=2)
    t0 = utcnow()
    for round_ in range(2):
        now = t0 + timedelta(seconds=10 * round_)
        claims = await store.claim(task_id, "w", limit=1, lease_seconds=5, now=now)
        assert [c.doc_id for c in claims] == ["d00000"]
        fresh = await store.claim(task_id, "w", limit=1, lease_seconds=60, now=now)
        await store.settle(task_id, [done(fresh[0])])
        report = await store.reclaim_expired(
            task_id, max_attempts=2, now=now + timedelta(seconds=6)
        )
        assert report.failed == (() if round_ == 0 else ("d00000",))
        assert report.released == (("d00000",) if round_ == 0 else ())

    doc = await store.get_document(task_id, "d00000")
    assert doc.state == D.FAILED
    assert doc.error.type == "WorkerLost"
    nothing = await store.reclaim_expired(task_id, max_attempts=2, now=t0)
    assert nothing.released == nothing.failed == ()
    await assert_counts_exact(store, task_id)


async def test_lease_extension_keeps_a_long_document(store):
    task_id = await make_task(store, 1)
    t0 = utcnow()
    [c] = await store.claim(task_id, "w", lease_seconds=5, now=t0)
    extended = await store.extend_leases(
        task_id, [(c.doc_id, c.fence)], lease_seconds=5, now=t0 + timedelta(seconds=4)
    )
    assert extended == [c.doc_id]
    report = await store.reclaim_expired(
        task_id, max_attempts=3, now=t0 + timedelta(seconds=7)
    )
    assert report.released == ()
    assert await store.settle(task_id, [done(c)]) == ["accepted"]


async def test_reset_failed_narrowed_by_ids_and_cancel_open(store):
    task_id = await make_task(store, 6)
    claims = await store.claim(task_id, "w", limit=3, lease_seconds=LEASE)
    err = DocumentError(type="Bad", message="bad", permanent=True)
    await store.settle(task_id, [done(c, D.FAILED, error=err) for c in claims])

    assert await store.reset_failed(task_id, ["d00001", "d00005"]) == 1
    doc = await store.get_document(task_id, "d00001")
    assert (doc.state, doc.attempts, doc.error) == (D.PENDING, 0, None)
    assert await store.reset_failed(task_id) == 2
    again = await store.claim(task_id, "w", limit=10, lease_seconds=LEASE)
    assert {c.doc_id for c in again} == {f"d{i:05d}" for i in range(6)}
    assert all(c.fence == 2 for c in again if c.doc_id in {"d00000", "d00002"})
    await store.settle(task_id, [done(c, D.PENDING, 0, 0) for c in again[:4]])
    await store.settle(task_id, [done(c) for c in again[4:]])

    assert await store.cancel_open(task_id) == 4
    counts = await store.counts(task_id)
    assert (counts.cancelled, counts.completed, counts.open) == (4, 2, 0)
    await assert_counts_exact(store, task_id)


async def test_iter_open_skips_finished_documents(store):
    task_id = await make_task(store, 30)
    claims = await store.claim(task_id, "w", limit=12, lease_seconds=LEASE)
    soon = utcnow() + timedelta(minutes=5)
    await store.settle(task_id, [done(c) for c in claims[:10]])
    await store.settle(
        task_id, [done(c, D.RETRY_WAIT, next_attempt_at=soon) for c in claims[10:]]
    )

    seen = [i async for batch in store.iter_open(task_id, batch_size=4) for i in batch]

    assert len(seen) == len(set(seen)) == 20
    assert set(seen) == {f"d{i:05d}" for i in range(10, 30)}


async def test_page_documents_by_state(store):
    task_id = await make_task(store, 9)
    claims = await store.claim(task_id, "w", limit=4, lease_seconds=LEASE)
    await store.settle(task_id, [done(c) for c in claims[:3]])

    first = await store.page_documents(task_id, state=D.COMPLETED, limit=2)
    rest = await store.page_documents(task_id, state=D.COMPLETED, after=first[-1].seq)
    assert [d.doc_id for d in first + rest] == ["d00000", "d00001", "d00002"]
    running = await store.page_documents(task_id, state=D.RUNNING)
    assert [(d.doc_id, d.lease_owner) for d in running] == [("d00003", "w")]
    assert len(await store.page_documents(task_id, limit=100)) == 9
    with pytest.raises(DocumentNotFound):
        await store.get_document(task_id, "missing")


async def test_result_written_twice_leaves_one_copy(store):
    task_id = await make_task(store, 1)
    [c] = await store.claim(task_id, "w", lease_seconds=LEASE)
    ref = await store.put_result(task_id, c.doc_id, c.fence, {"v": 1})
    assert ref == await store.put_result(task_id, c.doc_id, c.fence, {"v": 2})
    await store.settle(task_id, [done(c, result_ref=ref)])
    assert await store.get_result(task_id, c.doc_id) == {"v": 2}
    assert (await store.get_document(task_id, c.doc_id)).result_ref == ref
    assert await store.get_result(task_id, "missing") is None


async def test_transitions_follow_the_table_and_record_history(store):
    task_id = await make_task(store, 1)
    await store.transition_task(task_id, T.RUNNING, request_id="r1")
    with pytest.raises(TransitionRefused):
        await store.transition_task(task_id, T.PAUSED)
    await store.transition_task(task_id, T.PAUSING, reason="token budget reached")
    paused = await store.transition_task(
        task_id, T.PAUSED, reason="token budget reached"
    )
    assert paused.reason == "token budget reached"
    assert paused.paused_at is not None
    rejected = await store.record_rejection(
        task_id, T.PAUSED, reason="already paused", request_id="r9"
    )
    resumed = await store.transition_task(task_id, T.RUNNING, request_id="r10")
    assert resumed.reason is None
    assert resumed.resumed_at is not None

    history = await store.history(task_id)
    assert [(h.to_state, h.accepted) for h in history] == [
        (T.PENDING, True),
        (T.RUNNING, True),
        (T.PAUSING, True),
        (T.PAUSED, True),
        (T.PAUSED, False),
        (T.RUNNING, True),
    ]
    assert [h.seq for h in history] == list(range(1, 7))
    assert history[4] == rejected
    assert rejected.request_id == "r9"
    assert [h.seq for h in await store.history(task_id, since=4)] == [5, 6]
    assert resumed.version == 6


async def test_concurrent_transitions_compare_and_set(store_factory):
    first = await store_factory()
    task_id = await make_task(first, 1)
    await first.transition_task(task_id, T.RUNNING)
    stores = [first] + [await store_factory() for _ in range(3)]

    async def try_pause(store, i):
        try:
            await store.transition_task(
                task_id, T.PAUSING, expected=[T.RUNNING], request_id=f"r{i}"
            )
        except TransitionRefused:
            return False
        return True

    outcomes = await asyncio.gather(
        *(try_pause(stores[i % len(stores)], i) for i in range(12))
    )

    assert outcomes.count(True) == 1
    history = await first.history(task_id)
    assert Counter(h.to_state for h in history)[T.PAUSING] == 1


async def test_claim_named_documents_skips_the_unclaimable(store):
    task_id = await make_task(store, 6)
    [first] = await store.claim(task_id, "w", doc_ids=["d00002"], lease_seconds=LEASE)
    await store.settle(task_id, [done(first)])
    soon = utcnow() + timedelta(seconds=30)
    [waiting] = await store.claim(task_id, "w", doc_ids=["d00004"], lease_seconds=LEASE)
    await store.settle(task_id, [done(waiting, D.RETRY_WAIT, next_attempt_at=soon)])

    named = ["d00002", "d00003", "d00004", "nope", "d00005"]
    got = await store.claim(task_id, "w", doc_ids=named, limit=10, lease_seconds=LEASE)
    assert sorted(c.doc_id for c in got) == ["d00003", "d00005"]
    assert await store.due_retries(task_id, limit=10) == []
    later = soon + timedelta(seconds=1)
    assert await store.due_retries(task_id, limit=10, now=later) == ["d00004"]
    again = await store.claim(
        task_id, "w", doc_ids=named, limit=1, lease_seconds=LEASE, now=later
    )
    assert [c.doc_id for c in again] == ["d00004"]
    await assert_counts_exact(store, task_id)


async def test_tokens_are_found_by_hash(store):
    await store.put_token("h" * 64, "acme", label="ci")
    assert await store.tenant_of_token("h" * 64) == "acme"
    assert await store.tenant_of_token("x" * 64) is None


async def test_task_status_reads_task_and_counts_together(store):
    task_id = await make_task(store, 4)
    claims = await store.claim(task_id, "w", limit=2, lease_seconds=LEASE)
    await store.settle(task_id, [done(claims[0])])
    task, counts = await store.task_status(task_id, tenant="acme")
    assert task.task_id == task_id
    assert (counts.completed, counts.running, counts.pending) == (1, 1, 2)
    with pytest.raises(TaskNotFound):
        await store.task_status(task_id, tenant="someone-else")


async def test_completed_documents_page_in_the_order_they_finished(store):
    task_id = await make_task(store, 5)
    t0 = utcnow()
    for i, doc_id in enumerate(["d00003", "d00001", "d00004"]):
        [c] = await store.claim(task_id, "w", doc_ids=[doc_id], lease_seconds=LEASE)
        await store.settle(task_id, [done(c)], now=t0 + timedelta(seconds=i))
    first = await store.page_completed(task_id, limit=2)
    assert [d.doc_id for d in first] == ["d00003", "d00001"]
    cursor = (first[-1].finished_at, first[-1].seq)
    rest = await store.page_completed(task_id, after=cursor)
    assert [d.doc_id for d in rest] == ["d00004"]
    assert await store.get_task_result(task_id) is None
    await store.put_task_result(task_id, {"graph": 1, "cursor": [1, 2]})
    await store.put_task_result(task_id, {"graph": 2})
    assert await store.get_task_result(task_id) == {"graph": 2}
