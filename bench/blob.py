"""The one-JSON-blob checkpoint design that taskpoint replaces, kept as a baseline.

Before taskpoint, a task's progress was one JSON object holding the state of every
document, stored in one row and rewritten whole on every change. This module
re-implements that design faithfully enough to time it against
:class:`store.sqlite.SQLiteStore` under the same conditions:

- one SQLite row per task whose ``checkpoint`` column is a JSON object with the
  task's counters and, per document, the same fields our ``documents`` table keeps
  on the work path: state, attempts, fence, lease owner and expiry, next attempt
  time, prompt and completion tokens, error;
- claiming reads the row, parses the whole JSON, picks the due waiting documents
  and then the first pending ones in document order, marks them running, then
  serialises the whole object and rewrites the row;
- settling reads, parses, checks each outcome's fence, updates, rewrites;
- the same file settings as ours: WAL, the same ``synchronous`` value, every
  operation one ``BEGIN IMMEDIATE`` transaction, all statements on one thread
  that owns the connection, behind the same async methods.

Document texts live in a table of their own, as in our store, so the blob holds
only states: the baseline is not burdened with anything ours does not rewrite.
Only what the benchmark calls is implemented (start, stop, create_task, claim,
settle); this is a measuring stick, not a store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from store.base import DEFAULT_BATCH, Documents
from store.batches import batched
from store.errors import DuplicateDocument, StoreError, TaskNotFound
from store.models import Claim, NewTask, Outcome, SettleResult, utcnow
from store.sqlite import SYNCHRONOUS_MODES
from store.states import DocumentState

R = TypeVar("R")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blob_tasks (task_id TEXT PRIMARY KEY,"
    " tenant TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL,"
    " config TEXT NOT NULL, checkpoint TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blob_contents (task_id TEXT NOT NULL,"
    " doc_id TEXT NOT NULL, text TEXT, uri TEXT, PRIMARY KEY (task_id, doc_id))"
    " WITHOUT ROWID",
)

FINAL_COUNTERS = {"completed", "failed", "cancelled"}


def new_entry() -> dict[str, Any]:
    """Return the state of a document that was never attempted."""
    return {
        "state": "pending",
        "attempts": 0,
        "fence": 0,
        "lease_owner": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "error": None,
    }


def pick_claimable(
    documents: dict[str, dict[str, Any]], limit: int, now: float
) -> list[str]:
    """Return up to ``limit`` document ids: due waiting ones first, then pending."""
    waiting = sorted(
        (entry["next_attempt_at"], doc_id)
        for doc_id, entry in documents.items()
        if entry["state"] == "retry_wait" and entry["next_attempt_at"] <= now
    )
    picked = [doc_id for _, doc_id in waiting[:limit]]
    if len(picked) < limit:
        for doc_id, entry in documents.items():
            if entry["state"] == "pending":
                picked.append(doc_id)
                if len(picked) == limit:
                    break
    return picked


def apply_outcome(blob: dict[str, Any], outcome: Outcome) -> SettleResult:
    """Write one outcome into the parsed blob under its fence; say what happened."""
    entry = blob["documents"].get(outcome.doc_id)
    if entry is None or entry["fence"] != outcome.fence or entry["state"] != "running":
        if (
            entry
            and entry["fence"] == outcome.fence
            and entry["state"] == outcome.state
        ):
            return "duplicate"
        return "stale"
    state = outcome.state
    entry["state"] = str(state)
    entry["lease_owner"] = None
    entry["lease_expires_at"] = None
    entry["next_attempt_at"] = (
        None if outcome.next_attempt_at is None else outcome.next_attempt_at.timestamp()
    )
    if state is DocumentState.PENDING:
        entry["attempts"] -= 1
    if outcome.error is not None:
        entry["error"] = outcome.error.model_dump()
    elif state is DocumentState.COMPLETED:
        entry["error"] = None
    entry["prompt_tokens"] += outcome.tokens.prompt
    entry["completion_tokens"] += outcome.tokens.completion
    counters = blob["counters"]
    counters["prompt_tokens"] += outcome.tokens.prompt
    counters["completion_tokens"] += outcome.tokens.completion
    if str(state) in FINAL_COUNTERS:
        counters[str(state)] += 1
    return "accepted"


class BlobStore:
    """The legacy design: a task's every document state in one JSON row.

    Args:
        path: the database file; created when missing.
        synchronous: SQLite's durability setting, as for ``SQLiteStore``.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "full") -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise StoreError(
                f"synchronous={synchronous!r} is not one of {SYNCHRONOUS_MODES}"
            )
        self.path = Path(path)
        self.synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        if self._executor is None:
            raise StoreError(f"blob store {str(self.path)!r} is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise StoreError(f"blob store {str(self.path)!r} is not started")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        self._db = db
        with self._tx():
            for statement in SCHEMA:
                db.execute(statement)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def start(self) -> None:
        """Open the file on the store's own thread and create the tables."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskpoint-blob")
        await self._run(self._open)

    async def stop(self) -> None:
        """Close the connection and its thread."""
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def create_task(
        self, new: NewTask, documents: Documents, *, batch_size: int = DEFAULT_BATCH
    ) -> str:
        """Store the texts batch by batch, then the task's blob in one write."""
        states: dict[str, dict[str, Any]] = {}
        async for batch in batched(documents, batch_size):
            rows = []
            for doc in batch:
                if doc.doc_id in states:
                    raise DuplicateDocument(new.task_id, doc.doc_id)
                states[doc.doc_id] = new_entry()
                rows.append((new.task_id, doc.doc_id, doc.text, doc.uri))
            await self._run(self._insert_contents, rows)
        counters = dict.fromkeys(
            ("completed", "failed", "cancelled", "prompt_tokens", "completion_tokens"),
            0,
        )
        blob = {"counters": counters, "documents": states}
        await self._run(self._insert_task, new, dump(blob))
        return new.task_id

    def _insert_contents(
        self, rows: list[tuple[str, str, str | None, str | None]]
    ) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO blob_contents (task_id, doc_id, text, uri)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    def _insert_task(self, new: NewTask, checkpoint: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO blob_tasks (task_id, tenant, type, state, config,"
                " checkpoint) VALUES (?, ?, ?, 'pending', ?, ?)",
                (
                    new.task_id,
                    new.tenant,
                    new.type,
                    new.config.model_dump_json(),
                    checkpoint,
                ),
            )

    async def claim(
        self,
        task_id: str,
        owner: str,
        *,
        limit: int = 1,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` documents: parse, pick, rewrite the whole blob."""
        at = (now or utcnow()).timestamp()
        return await self._run(self._claim, task_id, owner, limit, at, lease_seconds)

    def _claim(
        self, task_id: str, owner: str, limit: int, now: float, lease_seconds: float
    ) -> list[Claim]:
        expires = now + lease_seconds
        claims = []
        with self._tx() as db:
            blob = read_blob(db, task_id)
            documents = blob["documents"]
            for doc_id in pick_claimable(documents, limit, now):
                entry = documents[doc_id]
                entry.update(
                    state="running",
                    attempts=entry["attempts"] + 1,
                    fence=entry["fence"] + 1,
                    lease_owner=owner,
                    lease_expires_at=expires,
                    next_attempt_at=None,
                )
                claims.append(
                    Claim(
                        doc_id=doc_id,
                        fence=entry["fence"],
                        attempt=entry["attempts"],
                        lease_expires_at=datetime.fromtimestamp(expires, UTC),
                    )
                )
            write_blob(db, task_id, blob)
        return claims

    async def settle(
        self, task_id: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[SettleResult]:
        """Write outcomes under their fences: parse, update, rewrite the blob."""
        if not outcomes:
            return []
        return await self._run(self._settle, task_id, list(outcomes))

    def _settle(self, task_id: str, outcomes: list[Outcome]) -> list[SettleResult]:
        with self._tx() as db:
            blob = read_blob(db, task_id)
            results = [apply_outcome(blob, outcome) for outcome in outcomes]
            write_blob(db, task_id, blob)
        return results


def dump(blob: dict[str, Any]) -> str:
    """Serialise a blob compactly, as the legacy design stored it."""
    return json.dumps(blob, separators=(",", ":"))


def read_blob(db: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Read and parse a task's whole blob.

    Raises:
        TaskNotFound: no such task.
    """
    row = db.execute(
        "SELECT checkpoint FROM blob_tasks WHERE task_id = ?", (task_id,)
    ).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    blob: dict[str, Any] = json.loads(row[0])
    return blob


def write_blob(db: sqlite3.Connection, task_id: str, blob: dict[str, Any]) -> None:
    """Serialise and rewrite a task's whole blob."""
    db.execute(
        "UPDATE blob_tasks SET checkpoint = ? WHERE task_id = ?", (dump(blob), task_id)
    )
