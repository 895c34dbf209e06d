"""What only the SQLite store promises: scale in memory, indexes, schema, processes."""

from __future__ import annotations

import json
import multiprocessing
import re
import sqlite3
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest

from store import sqlite as sqlite_module
from store.errors import SchemaVersionError, StoreError
from store.models import (
    DocumentError,
    DocumentInput,
    NewTask,
    Outcome,
    TokenUsage,
    utcnow,
)
from store.sqlite import SCHEMA_VERSION, SQLiteStore, parse_url
from store.states import DocumentState as D

DOCUMENT_TABLES = ("documents", "contents", "results", "tasks", "history")


async def open_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path, synchronous="normal")
    await store.start()
    return store


@pytest.mark.slow
async def test_hundred_thousand_documents_created_and_iterated_in_little_memory(
    tmp_path: Path,
):
    store = await open_store(tmp_path / "big.db")
    body = "lorem ipsum dolor sit amet " * 20

    def documents():
        for i in range(100_000):
            yield DocumentInput(doc_id=f"doc-{i:06d}", text=f"{i} {body}")

    tracemalloc.start()
    try:
        task = await store.create_task(NewTask(tenant="t", type="noop"), documents())
        seen = 0
        async for batch in store.iter_open(task.task_id, batch_size=1000):
            seen += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.stop()

    assert task.total_documents == seen == 100_000
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"


async def exercise_document_path(store: SQLiteStore) -> str:
    """Run every document-path operation once on a small task."""
    task = await store.create_task(
        NewTask(tenant="t", type="noop"),
        [DocumentInput(doc_id=f"d{i}", text="x") for i in range(20)],
    )
    task_id = task.task_id
    now = utcnow()
    claims = await store.claim(task_id, "w", limit=4, lease_seconds=30, now=now)
    await store.claim(task_id, "w", limit=1, lease_seconds=30, now=now)
    await store.claim(task_id, "w", doc_ids=["d9", "d10"], limit=2, lease_seconds=30)
    await store.due_retries(task_id, limit=5)
    await store.extend_leases(
        task_id, [(c.doc_id, c.fence) for c in claims], lease_seconds=30
    )
    await store.put_result(task_id, claims[0].doc_id, claims[0].fence, {"r": 1})
    err = DocumentError(type="E", message="m")
    await store.settle(
        task_id,
        [
            Outcome(
                doc_id=claims[0].doc_id,
                fence=claims[0].fence,
                state=D.COMPLETED,
                tokens=TokenUsage(prompt=1),
            ),
            Outcome(
                doc_id=claims[1].doc_id,
                fence=claims[1].fence,
                state=D.FAILED,
                error=err,
            ),
            Outcome(
                doc_id=claims[2].doc_id,
                fence=claims[2].fence,
                state=D.RETRY_WAIT,
                next_attempt_at=now,
                error=err,
            ),
            Outcome(doc_id=claims[2].doc_id, fence=99, state=D.COMPLETED),
        ],
    )
    await store.reclaim_expired(task_id, max_attempts=3, now=now + timedelta(minutes=5))
    await store.reset_failed(task_id, [claims[1].doc_id])
    await store.reset_failed(task_id)
    await store.counts(task_id)
    await store.next_retry_at(task_id)
    await store.load_contents(task_id, [c.doc_id for c in claims])
    await store.get_result(task_id, claims[0].doc_id)
    await store.get_document(task_id, claims[0].doc_id)
    await store.page_documents(task_id, state=D.PENDING, limit=5)
    await store.page_documents(task_id, after=3, limit=5)
    async for _ in store.iter_open(task_id, batch_size=5):
        pass
    await store.cancel_open(task_id)
    await store.get_task(task_id, tenant="t")
    await store.history(task_id, since=0)
    return task_id


def plan_lines(db: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


async def test_every_document_path_statement_uses_an_index(tmp_path: Path):
    store = await open_store(tmp_path / "plan.db")
    statements: list[str] = []
    await store._run(store.db.set_trace_callback, statements.append)
    await exercise_document_path(store)
    await store._run(store.db.set_trace_callback, None)
    await store.stop()

    db = sqlite3.connect(tmp_path / "plan.db")
    checked = 0
    for sql in statements:
        if not re.match(r"\s*(SELECT|UPDATE|INSERT|DELETE)", sql, re.I):
            continue
        for line in plan_lines(db, sql):
            table = re.match(r"(SCAN|SEARCH) (\w+)", line)
            if table and table.group(2) in DOCUMENT_TABLES:
                checked += 1
                assert line.startswith("SEARCH"), f"{line!r} in {sql!r}"
    db.close()
    # Every operation above touched at least one table of the document path.
    assert checked >= 20


async def test_schema_newer_than_the_code_is_refused(tmp_path: Path):
    path = tmp_path / "s.db"
    store = await open_store(path)
    await store.stop()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),)
        )

    with pytest.raises(SchemaVersionError, match="newer"):
        await open_store(path)


async def test_older_schema_is_migrated_step_by_step(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.db"
    store = await open_store(path)
    await store.stop()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    ran = []

    def step_zero(db: sqlite3.Connection) -> None:
        ran.append(
            db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
        )
        db.execute("ALTER TABLE tasks ADD COLUMN migrated INTEGER DEFAULT 7")

    monkeypatch.setitem(sqlite_module.MIGRATIONS, 0, step_zero)
    store = await open_store(path)
    await store.stop()

    assert ran == ["0"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
    assert "migrated" in columns


def test_store_urls():
    assert parse_url("sqlite:///var/lib/tp.db") == ("var/lib/tp.db", "full")
    assert parse_url("sqlite:////abs/tp.db?synchronous=NORMAL") == (
        "/abs/tp.db",
        "normal",
    )
    for bad in ("mongodb://x", "sqlite:///x?synchronous=maybe", "sqlite:///x?y=1"):
        with pytest.raises(StoreError):
            parse_url(bad)


def claim_all_in_process(path: str, task_id: str, owner: str, queue, go) -> None:
    import asyncio

    async def drain() -> list[str]:
        store = await open_store(Path(path))
        queue.put("ready")
        go.wait(timeout=60)
        got: list[str] = []
        while batch := await store.claim(task_id, owner, limit=3, lease_seconds=60):
            got.extend(c.doc_id for c in batch)
        await store.stop()
        return got

    queue.put(json.dumps(asyncio.run(drain())))


async def test_processes_sharing_a_file_never_claim_one_document_twice(
    tmp_path: Path,
):
    path = tmp_path / "shared.db"
    store = await open_store(path)
    task = await store.create_task(
        NewTask(tenant="t", type="noop"),
        [DocumentInput(doc_id=f"d{i}", text="x") for i in range(300)],
    )
    await store.stop()
    ctx = multiprocessing.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=claim_all_in_process,
            args=(str(path), task.task_id, f"p{i}", queue, go),
        )
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    assert [queue.get(timeout=60) for _ in procs] == ["ready"] * len(procs)
    go.set()
    claimed = [json.loads(queue.get(timeout=60)) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)

    everything = [doc_id for got in claimed for doc_id in got]
    assert len(everything) == len(set(everything)) == 300
    assert sum(1 for got in claimed if got) >= 2, "the processes did not race"
