"""The SQLite checkpoint store: the embedded default.

One file holds tasks, their history, document checkpoints, document contents
and results. Every write is one transaction opened with ``BEGIN IMMEDIATE``, so
several processes may share the file: SQLite serialises their writers and each
compare-and-set sees the state it changes. The stored counters of a task move in
the same transaction as the documents they count, so they are exact at every
commit, not only when the task is quiet.

All statements run on one thread per store that owns the connection; the event
loop never blocks on the file. Durability is SQLite's ``synchronous`` setting in
WAL mode: ``full`` (the default) syncs the log at every commit and survives a
power cut; ``normal`` survives a killed process but may lose the last commits on
a power cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from store.base import DEFAULT_BATCH, SCHEMA_VERSION, Documents
from store.batches import batched
from store.errors import (
    DocumentNotFound,
    DuplicateDocument,
    SchemaVersionError,
    StaleFence,
    StoreError,
    TaskNotFound,
    TransitionRefused,
)
from store.models import (
    Claim,
    DocumentCheckpoint,
    DocumentContent,
    DocumentInput,
    NewTask,
    Outcome,
    ReclaimReport,
    SettleResult,
    Task,
    TaskCounts,
    Transition,
    utcnow,
)
from store.states import (
    DocumentState,
    TaskState,
    check_task_transition,
)
from store.transitions import transition_fields

logger = logging.getLogger(__name__)

R = TypeVar("R")

SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    total_documents INTEGER NOT NULL DEFAULT 0,
    n_completed INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0,
    n_cancelled INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    sealed INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    paused_at REAL,
    resumed_at REAL,
    completed_at REAL,
    cancelled_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks (tenant, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, created_at);
CREATE TABLE IF NOT EXISTS history (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT,
    request_id TEXT,
    accepted INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    fence INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    next_attempt_at REAL,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempt_log TEXT NOT NULL DEFAULT '[]',
    result_ref TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_by_seq ON documents (task_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS documents_by_doc_id ON documents (task_id, doc_id);
CREATE INDEX IF NOT EXISTS documents_by_state ON documents (task_id, state, seq);
CREATE INDEX IF NOT EXISTS documents_waiting ON documents (task_id, next_attempt_at)
    WHERE state = 'retry_wait';
CREATE INDEX IF NOT EXISTS documents_leased ON documents (task_id, lease_expires_at)
    WHERE state = 'running';
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY,
    text TEXT,
    uri TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    label TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_completed ON documents (task_id, finished_at, seq)
    WHERE state = 'completed';
CREATE TABLE IF NOT EXISTS task_results (
    task_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    fence INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (task_id, doc_id)
);
"""

# Migrations from version N to N + 1, applied in order inside one transaction
# each. Version 1 is the first schema; the next change adds its step here.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

# An attempt's log entry is built in SQL so that it reads the row's values
# (attempt, fence, owner, start) from before the update.
ATTEMPT_ENTRY = (
    "json_object('attempt', attempts, 'fence', fence, 'owner', lease_owner,"
    " 'started_at', started_at, 'finished_at', :now, 'outcome', :outcome,"
    " 'tokens', json_object('prompt', :prompt, 'completion', :completion),"
    " 'error', json(:error))"
)

SETTLE_SQL = f"""
UPDATE documents SET
    state = :state,
    attempt_log = json_insert(attempt_log, '$[#]', {ATTEMPT_ENTRY}),
    attempts = attempts - :refund,
    lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = :next_attempt_at,
    error = coalesce(:error, CASE WHEN :state = 'completed' THEN NULL ELSE error END),
    prompt_tokens = prompt_tokens + :prompt,
    completion_tokens = completion_tokens + :completion,
    result_ref = coalesce(:result_ref, result_ref),
    finished_at = CASE WHEN :final THEN :now ELSE finished_at END,
    updated_at = :now
WHERE task_id = :task_id AND doc_id = :doc_id AND fence = :fence
    AND state = 'running'
"""

CLAIM_SQL = """
UPDATE documents SET
    state = 'running',
    attempts = attempts + 1,
    fence = fence + 1,
    lease_owner = :owner,
    lease_expires_at = :expires,
    next_attempt_at = NULL,
    started_at = :now,
    updated_at = :now
WHERE id IN ({candidates})
RETURNING seq, doc_id, fence, attempts
"""

CLAIM_WAITING = """
SELECT id FROM documents
WHERE task_id = :task_id AND state = 'retry_wait' AND next_attempt_at <= :now
ORDER BY next_attempt_at LIMIT :limit
"""

CLAIM_NAMED = """
SELECT id FROM documents
WHERE task_id = :task_id AND doc_id IN (SELECT value FROM json_each(:doc_ids))
    AND (state = 'pending' OR (state = 'retry_wait' AND next_attempt_at <= :now))
LIMIT :limit
"""

CLAIM_PENDING = """
SELECT id FROM documents
WHERE task_id = :task_id AND state = 'pending'
ORDER BY seq LIMIT :limit
"""

RECLAIM_SQL = f"""
UPDATE documents SET
    state = :state,
    attempt_log = json_insert(attempt_log, '$[#]', {ATTEMPT_ENTRY}),
    error = coalesce(json(:error), error),
    lease_owner = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN :state = 'failed' THEN :now ELSE finished_at END,
    updated_at = :now
WHERE task_id = :task_id AND state = 'running' AND lease_expires_at < :now
    AND (attempts >= :max_attempts) = :exhausted
RETURNING doc_id
"""

WORKER_LOST = json.dumps(
    {
        "type": "WorkerLost",
        "message": "the worker holding this document stopped before finishing it, "
        "as many times as the task allows attempts",
        "permanent": True,
    }
)

TASK_COLUMNS = (
    "task_id, tenant, type, state, config, total_documents, n_completed, n_failed,"
    " n_cancelled, prompt_tokens, completion_tokens, sealed, version, reason,"
    " created_at, started_at, paused_at, resumed_at, completed_at, cancelled_at"
)
DOCUMENT_COLUMNS = (
    "task_id, doc_id, seq, state, attempts, fence, lease_owner, lease_expires_at,"
    " next_attempt_at, error, prompt_tokens, completion_tokens, attempt_log,"
    " result_ref, created_at, started_at, finished_at, updated_at"
)
TIMESTAMPS = (
    "created_at",
    "started_at",
    "paused_at",
    "resumed_at",
    "completed_at",
    "cancelled_at",
)


def ts(value: datetime | None) -> float | None:
    """Return a datetime as epoch seconds, as the tables store it."""
    return None if value is None else value.timestamp()


def dt(value: float | None) -> datetime | None:
    """Return stored epoch seconds as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def parse_url(url: str) -> tuple[str, str]:
    """Split ``sqlite:///path?synchronous=full`` into the path and the setting.

    Raises:
        StoreError: the URL is not a SQLite URL or names an unknown setting.
    """
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite store URL: {url!r}; expected sqlite:///PATH")
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    synchronous = options.pop("synchronous", "full").lower()
    if options or synchronous not in SYNCHRONOUS_MODES or not path:
        raise StoreError(
            f"bad SQLite store URL {url!r}: expected sqlite:///PATH with an "
            f"optional ?synchronous= one of {SYNCHRONOUS_MODES}"
        )
    return path, synchronous


class SQLiteStore:
    """A :class:`store.base.CheckpointStore` in one SQLite file.

    Args:
        path: the database file; created with its folder when missing.
        synchronous: SQLite's durability setting, see the module docstring.
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

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """Open the store that ``sqlite:///PATH?synchronous=MODE`` names."""
        path, synchronous = parse_url(url)
        return cls(path, synchronous=synchronous)

    # Plumbing

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        if self._executor is None:
            raise StoreError(f"SQLite store {str(self.path)!r} is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; only touched on the store's own thread."""
        if self._db is None:
            raise StoreError(f"SQLite store {str(self.path)!r} is not started")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a compare-and-set that read
        # under a shared lock could otherwise fail to upgrade, or act on a
        # state another process is about to change.
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy, disk full) leaves the transaction open:
            # roll it back too, or every later BEGIN on this connection fails.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=OFF")
        self._db = db
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:
            # executescript would commit first; one statement at a time keeps
            # the schema, its check and any migration in one transaction.
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            found = int(row["value"]) if row else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise SchemaVersionError(found, SCHEMA_VERSION)
            for version in range(found, SCHEMA_VERSION):
                logger.info("migrating %s from schema %d", self.path, version)
                MIGRATIONS[version](db)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def start(self) -> None:
        """Open the file, create or migrate the schema and its indexes."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskpoint-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "SQLite store open at %s (synchronous=%s)", self.path, self.synchronous
        )

    async def stop(self) -> None:
        """Close the connection and its thread."""
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    # Tenants

    async def put_token(
        self, token_hash: str, tenant: str, *, label: str | None = None
    ) -> None:
        """Store an API token's hash for ``tenant``."""
        await self._run(self._put_token, token_hash, tenant, label)

    def _put_token(self, token_hash: str, tenant: str, label: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (hash, tenant, label, created_at)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, tenant, label, utcnow().timestamp()),
            )

    async def tenant_of_token(self, token_hash: str) -> str | None:
        """Return the tenant whose token has this hash, or None."""
        rows = await self._run(
            self._fetchall, "SELECT tenant FROM tokens WHERE hash = ?", (token_hash,)
        )
        return str(rows[0]["tenant"]) if rows else None

    # Tasks

    async def create_task(
        self, new: NewTask, documents: Documents, *, batch_size: int = DEFAULT_BATCH
    ) -> Task:
        """Create a task and store its documents batch by batch (see the Protocol)."""
        now = utcnow().timestamp()
        await self._run(self._insert_task, new, now)
        seq = 0
        try:
            async for batch in batched(documents, batch_size):
                await self._run(self._insert_documents, new.task_id, seq, batch, now)
                seq += len(batch)
        except BaseException:
            await self._run(self._delete_task, new.task_id)
            raise
        await self._run(self._seal_task, new.task_id, seq)
        logger.info("task created task_id=%s documents=%d", new.task_id, seq)
        return await self.get_task(new.task_id)

    def _insert_task(self, new: NewTask, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tasks (task_id, tenant, type, state, config, version,"
                " created_at) VALUES (?, ?, ?, 'pending', ?, 1, ?)",
                (new.task_id, new.tenant, new.type, new.config.model_dump_json(), now),
            )
            db.execute(
                "INSERT INTO history (task_id, seq, from_state, to_state, at, reason,"
                " accepted) VALUES (?, 1, NULL, 'pending', ?, 'created', 1)",
                (new.task_id, now),
            )

    def _insert_documents(
        self, task_id: str, first_seq: int, batch: list[DocumentInput], now: float
    ) -> None:
        seen: set[str] = set()
        for doc in batch:
            if doc.doc_id in seen:
                raise DuplicateDocument(task_id, doc.doc_id)
            seen.add(doc.doc_id)
        try:
            with self._tx() as db:
                # Holding the write lock, the next ids are ours; the content row
                # shares its document's id so reading both is one key lookup.
                (top,) = db.execute(
                    "SELECT coalesce(max(id), 0) FROM documents"
                ).fetchone()
                rows = [
                    (top + i + 1, task_id, first_seq + i, d.doc_id, now, now)
                    for i, d in enumerate(batch)
                ]
                db.executemany(
                    "INSERT INTO documents (id, task_id, seq, doc_id, state,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    rows,
                )
                db.executemany(
                    "INSERT INTO contents (id, text, uri) VALUES (?, ?, ?)",
                    ((top + i + 1, d.text, d.uri) for i, d in enumerate(batch)),
                )
        except sqlite3.IntegrityError as err:
            raise DuplicateDocument(
                task_id, self._find_duplicate(task_id, seen)
            ) from err

    def _find_duplicate(self, task_id: str, doc_ids: set[str]) -> str:
        for doc_id in doc_ids:
            hit = self.db.execute(
                "SELECT 1 FROM documents WHERE task_id = ? AND doc_id = ?",
                (task_id, doc_id),
            ).fetchone()
            if hit:
                return doc_id
        return "?"

    def _delete_task(self, task_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM contents WHERE id IN"
                " (SELECT id FROM documents WHERE task_id = ?)",
                (task_id,),
            )
            for table in ("documents", "history", "results", "task_results", "tasks"):
                db.execute(f"DELETE FROM {table} WHERE task_id = ?", (task_id,))

    def _seal_task(self, task_id: str, total: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET total_documents = ?, sealed = 1 WHERE task_id = ?",
                (total, task_id),
            )

    async def get_task(self, task_id: str, tenant: str | None = None) -> Task:
        """Return a task, only if it belongs to ``tenant`` when one is given."""
        return await self._run(self._get_task, task_id, tenant)

    def _get_task(self, task_id: str, tenant: str | None = None) -> Task:
        row = self.db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise TaskNotFound(task_id)
        return task_from_row(row)

    async def list_tasks(
        self,
        tenant: str | None = None,
        *,
        states: Iterable[TaskState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Task]:
        """Return tasks, newest first, optionally of one tenant and some states."""
        clauses: list[str] = ["created_at < ?"]
        params: list[Any] = [ts(before) or float("inf")]
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if states is not None:
            wanted = [str(s) for s in states]
            clauses.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        sql = (
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {' AND '.join(clauses)}"
            " ORDER BY created_at DESC LIMIT ?"
        )
        rows = await self._run(self._fetchall, sql, (*params, limit))
        return [task_from_row(r) for r in rows]

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    async def transition_task(
        self,
        task_id: str,
        target: TaskState,
        *,
        expected: Iterable[TaskState] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Task:
        """Move a task to ``target`` with a compare-and-set and record it."""
        allowed = None if expected is None else frozenset(expected)
        when = now or utcnow()
        return await self._run(
            self._transition, task_id, target, allowed, reason, request_id, when
        )

    def _transition(
        self,
        task_id: str,
        target: TaskState,
        allowed: frozenset[TaskState] | None,
        reason: str | None,
        request_id: str | None,
        now: datetime,
    ) -> Task:
        with self._tx() as db:
            task = self._get_task(task_id)
            if allowed is not None and task.state not in allowed:
                raise_refused(task, target, allowed)
            check_task_transition(task_id, task.state, target)
            fields = transition_fields(task, target, reason, now)
            assignments = "".join(f", {k} = :{k}" for k in fields)
            values = {
                k: ts(v) if isinstance(v, datetime) else v for k, v in fields.items()
            }
            db.execute(
                f"UPDATE tasks SET state = :state, version = version + 1{assignments}"
                " WHERE task_id = :task_id",
                {**values, "state": str(target), "task_id": task_id},
            )
            self._append_history(task, target, reason, request_id, now, accepted=True)
            updated = self._get_task(task_id)
        logger.info(
            "task state task_id=%s from=%s to=%s reason=%s request_id=%s",
            task_id,
            task.state,
            target,
            reason,
            request_id,
        )
        return updated

    def _append_history(
        self,
        task: Task,
        target: TaskState,
        reason: str | None,
        request_id: str | None,
        now: datetime,
        *,
        accepted: bool,
    ) -> Transition:
        entry = Transition(
            seq=task.version + 1,
            from_state=task.state,
            to_state=target,
            at=now,
            reason=reason,
            request_id=request_id,
            accepted=accepted,
        )
        self.db.execute(
            "INSERT INTO history (task_id, seq, from_state, to_state, at, reason,"
            " request_id, accepted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task.task_id,
                entry.seq,
                str(task.state),
                str(target),
                now.timestamp(),
                reason,
                request_id,
                int(accepted),
            ),
        )
        return entry

    async def record_rejection(
        self,
        task_id: str,
        target: TaskState,
        *,
        reason: str,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Transition:
        """Append a refused request to the history without a transition."""
        return await self._run(
            self._reject, task_id, target, reason, request_id, now or utcnow()
        )

    def _reject(
        self,
        task_id: str,
        target: TaskState,
        reason: str,
        request_id: str | None,
        now: datetime,
    ) -> Transition:
        with self._tx() as db:
            task = self._get_task(task_id)
            db.execute(
                "UPDATE tasks SET version = version + 1 WHERE task_id = ?", (task_id,)
            )
            return self._append_history(
                task, target, reason, request_id, now, accepted=False
            )

    async def history(self, task_id: str, since: int = 0) -> list[Transition]:
        """Return the history entries after ``since``."""
        rows = await self._run(
            self._fetchall,
            "SELECT seq, from_state, to_state, at, reason, request_id, accepted"
            " FROM history WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, since),
        )
        return [
            Transition(
                seq=r["seq"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                at=dt(r["at"]),
                reason=r["reason"],
                request_id=r["request_id"],
                accepted=bool(r["accepted"]),
            )
            for r in rows
        ]

    async def counts(self, task_id: str) -> TaskCounts:
        """Return every document of the task counted by state."""
        return await self._run(self._counts, task_id)

    async def task_status(
        self, task_id: str, tenant: str | None = None
    ) -> tuple[Task, TaskCounts]:
        """Return a task and its counts, in one trip to the store's thread."""
        return await self._run(self._task_status, task_id, tenant)

    def _task_status(self, task_id: str, tenant: str | None) -> tuple[Task, TaskCounts]:
        task = self._get_task(task_id, tenant)
        return task, self._open_counts(task)

    def _counts(self, task_id: str) -> TaskCounts:
        return self._open_counts(self._get_task(task_id))

    def _open_counts(self, task: Task) -> TaskCounts:
        task_id = task.task_id
        rows = self.db.execute(
            "SELECT state, count(*) AS n FROM documents WHERE task_id = ?"
            " AND state IN ('running', 'retry_wait') GROUP BY state",
            (task_id,),
        ).fetchall()
        open_counts = {r["state"]: r["n"] for r in rows}
        return counts_of(
            task, open_counts.get("running", 0), open_counts.get("retry_wait", 0)
        )

    async def recount(self, task_id: str) -> TaskCounts:
        """Rebuild the task's stored counters from its documents."""
        return await self._run(self._recount, task_id)

    def _recount(self, task_id: str) -> TaskCounts:
        with self._tx() as db:
            rows = db.execute(
                "SELECT state, count(*) AS n, sum(prompt_tokens) AS p,"
                " sum(completion_tokens) AS c FROM documents WHERE task_id = ?"
                " GROUP BY state",
                (task_id,),
            ).fetchall()
            by_state = {r["state"]: r["n"] for r in rows}
            db.execute(
                "UPDATE tasks SET n_completed = ?, n_failed = ?, n_cancelled = ?,"
                " prompt_tokens = ?, completion_tokens = ?, total_documents = ?"
                " WHERE task_id = ?",
                (
                    by_state.get("completed", 0),
                    by_state.get("failed", 0),
                    by_state.get("cancelled", 0),
                    sum(r["p"] or 0 for r in rows),
                    sum(r["c"] or 0 for r in rows),
                    sum(by_state.values()),
                    task_id,
                ),
            )
            return self._counts(task_id)

    # Documents on the work path

    async def claim(
        self,
        task_id: str,
        owner: str,
        *,
        limit: int = 1,
        doc_ids: Sequence[str] | None = None,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` claimable documents (of ``doc_ids``) to ``owner``."""
        at = (now or utcnow()).timestamp()
        params = {
            "task_id": task_id,
            "now": at,
            "limit": limit,
            "owner": owner,
            "expires": at + lease_seconds,
            "doc_ids": None if doc_ids is None else json.dumps(list(doc_ids)),
        }
        return await self._run(self._claim, params)

    def _claim(self, params: dict[str, Any]) -> list[Claim]:
        limit = params["limit"]
        with self._tx() as db:
            if params["doc_ids"] is not None:
                sources = [CLAIM_NAMED]
            else:
                sources = [CLAIM_WAITING, CLAIM_PENDING]
            rows: list[sqlite3.Row] = []
            for source in sources:
                if len(rows) >= limit:
                    break
                params["limit"] = limit - len(rows)
                sql = CLAIM_SQL.format(candidates=source)
                rows += db.execute(sql, params).fetchall()
        expires = params["expires"]
        lease_end = datetime.fromtimestamp(expires, UTC)
        return [
            Claim(
                doc_id=r["doc_id"],
                fence=r["fence"],
                attempt=r["attempts"],
                lease_expires_at=lease_end,
            )
            for r in sorted(rows, key=lambda r: r["seq"])
        ]

    async def extend_leases(
        self,
        task_id: str,
        leases: Sequence[tuple[str, int]],
        *,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[str]:
        """Extend the leases that are still current; return their document ids."""
        expires = (now or utcnow()).timestamp() + lease_seconds
        return await self._run(self._extend, task_id, list(leases), expires)

    def _extend(
        self, task_id: str, leases: list[tuple[str, int]], expires: float
    ) -> list[str]:
        extended = []
        with self._tx() as db:
            for doc_id, fence in leases:
                cur = db.execute(
                    "UPDATE documents SET lease_expires_at = ? WHERE task_id = ?"
                    " AND doc_id = ? AND fence = ? AND state = 'running'",
                    (expires, task_id, doc_id, fence),
                )
                if cur.rowcount:
                    extended.append(doc_id)
        return extended

    async def settle(
        self, task_id: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[SettleResult]:
        """Write claimed documents' outcomes under their fences, with counters."""
        if not outcomes:
            return []
        return await self._run(
            self._settle, task_id, list(outcomes), (now or utcnow()).timestamp()
        )

    def _settle(
        self, task_id: str, outcomes: list[Outcome], now: float
    ) -> list[SettleResult]:
        results: list[SettleResult] = []
        delta = {
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "prompt": 0,
            "completion": 0,
        }
        with self._tx() as db:
            for outcome in outcomes:
                cur = db.execute(SETTLE_SQL, settle_params(task_id, outcome, now))
                if cur.rowcount:
                    results.append("accepted")
                    delta["prompt"] += outcome.tokens.prompt
                    delta["completion"] += outcome.tokens.completion
                    if outcome.state.value in delta:
                        delta[outcome.state.value] += 1
                else:
                    results.append(self._classify(task_id, outcome))
            if any(delta.values()):
                db.execute(
                    "UPDATE tasks SET n_completed = n_completed + :completed,"
                    " n_failed = n_failed + :failed,"
                    " n_cancelled = n_cancelled + :cancelled,"
                    " prompt_tokens = prompt_tokens + :prompt,"
                    " completion_tokens = completion_tokens + :completion"
                    " WHERE task_id = :task_id",
                    {**delta, "task_id": task_id},
                )
        return results

    def _classify(self, task_id: str, outcome: Outcome) -> SettleResult:
        row = self.db.execute(
            "SELECT state, fence FROM documents WHERE task_id = ? AND doc_id = ?",
            (task_id, outcome.doc_id),
        ).fetchone()
        if row and row["fence"] == outcome.fence and row["state"] == outcome.state:
            return "duplicate"
        logger.warning(
            "stale write refused task_id=%s doc_id=%s fence=%d",
            task_id,
            outcome.doc_id,
            outcome.fence,
        )
        return "stale"

    async def put_result(
        self, task_id: str, doc_id: str, fence: int, result: dict[str, Any]
    ) -> str:
        """Store a document's result unless a newer attempt stored one."""
        body = json.dumps(result, separators=(",", ":"))
        return await self._run(self._put_result, task_id, doc_id, fence, body)

    def _put_result(self, task_id: str, doc_id: str, fence: int, body: str) -> str:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO results (task_id, doc_id, fence, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (task_id, doc_id) DO UPDATE SET fence = excluded.fence,"
                " body = excluded.body WHERE excluded.fence >= results.fence",
                (task_id, doc_id, fence, body),
            )
            if not cur.rowcount:
                raise StaleFence(task_id, doc_id, fence)
        return result_ref(task_id, doc_id)

    async def get_result(self, task_id: str, doc_id: str) -> dict[str, Any] | None:
        """Return a document's stored result, or None."""
        rows = await self._run(
            self._fetchall,
            "SELECT body FROM results WHERE task_id = ? AND doc_id = ?",
            (task_id, doc_id),
        )
        return json.loads(rows[0]["body"]) if rows else None

    async def load_contents(
        self, task_id: str, doc_ids: Sequence[str]
    ) -> dict[str, DocumentContent]:
        """Return the text or URI of the given documents."""
        rows = await self._run(
            self._fetchall,
            "SELECT d.doc_id, c.text, c.uri FROM documents AS d"
            " JOIN contents AS c ON c.id = d.id"
            " WHERE d.task_id = ? AND d.doc_id IN (SELECT value FROM json_each(?))",
            (task_id, json.dumps(list(doc_ids))),
        )
        return {
            r["doc_id"]: DocumentContent(
                doc_id=r["doc_id"], text=r["text"], uri=r["uri"]
            )
            for r in rows
        }

    async def put_task_result(self, task_id: str, result: dict[str, Any]) -> None:
        """Store (replace) the task's own result."""
        body = json.dumps(result, separators=(",", ":"))
        await self._run(self._put_task_result, task_id, body)

    def _put_task_result(self, task_id: str, body: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO task_results (task_id, body) VALUES (?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET body = excluded.body",
                (task_id, body),
            )

    async def get_task_result(self, task_id: str) -> dict[str, Any] | None:
        """Return the task's own result, or None."""
        rows = await self._run(
            self._fetchall,
            "SELECT body FROM task_results WHERE task_id = ?",
            (task_id,),
        )
        return json.loads(rows[0]["body"]) if rows else None

    async def page_completed(
        self,
        task_id: str,
        *,
        after: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return completed documents in the order they finished, after ``after``."""
        at, seq = (after[0].timestamp(), after[1]) if after else (-1.0, -1)
        rows = await self._run(
            self._fetchall,
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE task_id = :task_id"
            " AND state = 'completed' AND (finished_at > :at"
            " OR (finished_at = :at AND seq > :seq))"
            " ORDER BY finished_at, seq LIMIT :limit",
            {"task_id": task_id, "at": at, "seq": seq, "limit": limit},
        )
        return [checkpoint_from_row(r) for r in rows]

    # Documents on the control path

    async def reclaim_expired(
        self, task_id: str, *, max_attempts: int, now: datetime | None = None
    ) -> ReclaimReport:
        """Release expired leases; fail the documents out of attempts."""
        return await self._run(
            self._reclaim, task_id, max_attempts, (now or utcnow()).timestamp()
        )

    def _reclaim(self, task_id: str, max_attempts: int, now: float) -> ReclaimReport:
        base = {
            "task_id": task_id,
            "now": now,
            "max_attempts": max_attempts,
            "prompt": 0,
            "completion": 0,
        }
        with self._tx() as db:
            failed = db.execute(
                RECLAIM_SQL,
                {
                    **base,
                    "state": "failed",
                    "outcome": "lost",
                    "error": WORKER_LOST,
                    "exhausted": 1,
                },
            ).fetchall()
            released = db.execute(
                RECLAIM_SQL,
                {
                    **base,
                    "state": "pending",
                    "outcome": "lost",
                    "error": None,
                    "exhausted": 0,
                },
            ).fetchall()
            if failed:
                db.execute(
                    "UPDATE tasks SET n_failed = n_failed + ? WHERE task_id = ?",
                    (len(failed), task_id),
                )
        report = ReclaimReport(
            released=tuple(r["doc_id"] for r in released),
            failed=tuple(r["doc_id"] for r in failed),
        )
        if failed or released:
            logger.warning(
                "expired leases reclaimed task_id=%s released=%d failed=%d",
                task_id,
                len(released),
                len(failed),
            )
        return report

    async def reset_failed(
        self,
        task_id: str,
        doc_ids: Iterable[str] | None = None,
        *,
        now: datetime | None = None,
    ) -> int:
        """Move failed documents back to pending with a fresh attempt budget."""
        names = None if doc_ids is None else json.dumps(list(doc_ids))
        return await self._run(
            self._reset, task_id, names, (now or utcnow()).timestamp()
        )

    def _reset(self, task_id: str, names: str | None, now: float) -> int:
        narrow = (
            ""
            if names is None
            else " AND doc_id IN (SELECT value FROM json_each(:names))"
        )
        with self._tx() as db:
            cur = db.execute(
                "UPDATE documents SET state = 'pending', attempts = 0, error = NULL,"
                " next_attempt_at = NULL, finished_at = NULL, updated_at = :now"
                " WHERE task_id = :task_id AND state = 'failed'" + narrow,
                {"task_id": task_id, "names": names, "now": now},
            )
            db.execute(
                "UPDATE tasks SET n_failed = n_failed - ? WHERE task_id = ?",
                (cur.rowcount, task_id),
            )
        return cur.rowcount

    async def cancel_open(self, task_id: str, *, now: datetime | None = None) -> int:
        """Cancel every pending or waiting document of the task."""
        return await self._run(
            self._cancel_open, task_id, (now or utcnow()).timestamp()
        )

    def _cancel_open(self, task_id: str, now: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE documents SET state = 'cancelled', next_attempt_at = NULL,"
                " finished_at = ?, updated_at = ?"
                " WHERE task_id = ? AND state IN ('pending', 'retry_wait')",
                (now, now, task_id),
            )
            db.execute(
                "UPDATE tasks SET n_cancelled = n_cancelled + ? WHERE task_id = ?",
                (cur.rowcount, task_id),
            )
        return cur.rowcount

    async def iter_open(
        self, task_id: str, *, batch_size: int = DEFAULT_BATCH
    ) -> AsyncIterator[list[str]]:
        """Yield ids of pending, then waiting documents, in batches (by index)."""
        for state in (DocumentState.PENDING, DocumentState.RETRY_WAIT):
            after = -1
            while True:
                rows = await self._run(
                    self._fetchall,
                    "SELECT seq, doc_id FROM documents WHERE task_id = ? AND state = ?"
                    " AND seq > ? ORDER BY seq LIMIT ?",
                    (task_id, str(state), after, batch_size),
                )
                if not rows:
                    break
                yield [r["doc_id"] for r in rows]
                after = rows[-1]["seq"]

    async def due_retries(
        self, task_id: str, *, limit: int, now: datetime | None = None
    ) -> list[str]:
        """Return ids of waiting documents whose time to run again has come."""
        rows = await self._run(
            self._fetchall,
            "SELECT doc_id FROM documents WHERE task_id = ? AND state = 'retry_wait'"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (task_id, (now or utcnow()).timestamp(), limit),
        )
        return [r["doc_id"] for r in rows]

    async def next_retry_at(self, task_id: str) -> datetime | None:
        """Return the earliest time a waiting document may run again."""
        rows = await self._run(
            self._fetchall,
            "SELECT min(next_attempt_at) AS at FROM documents"
            " WHERE task_id = ? AND state = 'retry_wait'",
            (task_id,),
        )
        return dt(rows[0]["at"])

    async def page_documents(
        self,
        task_id: str,
        *,
        state: DocumentState | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return checkpoints in document order after the ``seq`` ``after``."""
        by_state = "" if state is None else " AND state = :state"
        rows = await self._run(
            self._fetchall,
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE task_id = :task_id"
            f"{by_state} AND seq > :after ORDER BY seq LIMIT :limit",
            {"task_id": task_id, "state": str(state), "after": after, "limit": limit},
        )
        return [checkpoint_from_row(r) for r in rows]

    async def get_document(self, task_id: str, doc_id: str) -> DocumentCheckpoint:
        """Return one document's checkpoint."""
        rows = await self._run(
            self._fetchall,
            f"SELECT {DOCUMENT_COLUMNS} FROM documents"
            " WHERE task_id = ? AND doc_id = ?",
            (task_id, doc_id),
        )
        if not rows:
            raise DocumentNotFound(task_id, doc_id)
        return checkpoint_from_row(rows[0])


def raise_refused(task: Task, target: TaskState, allowed: frozenset[TaskState]) -> None:
    """Raise the refusal of a transition whose expected state did not hold."""
    expected = ", ".join(sorted(str(s) for s in allowed))
    raise TransitionRefused(
        task.task_id, task.state, target, f"expected one of {expected}"
    )


def result_ref(task_id: str, doc_id: str) -> str:
    """Return the deterministic id under which a document's result is stored."""
    return f"{task_id}:{doc_id}"


def settle_params(task_id: str, outcome: Outcome, now: float) -> dict[str, Any]:
    """Return the named parameters of :data:`SETTLE_SQL` for one outcome."""
    state = outcome.state
    log_outcome = "interrupted" if state is DocumentState.PENDING else str(state)
    return {
        "task_id": task_id,
        "doc_id": outcome.doc_id,
        "fence": outcome.fence,
        "state": str(state),
        "outcome": log_outcome,
        "refund": int(state is DocumentState.PENDING),
        "final": int(
            state
            in (DocumentState.COMPLETED, DocumentState.FAILED, DocumentState.CANCELLED)
        ),
        "next_attempt_at": ts(outcome.next_attempt_at),
        "error": None if outcome.error is None else outcome.error.model_dump_json(),
        "prompt": outcome.tokens.prompt,
        "completion": outcome.tokens.completion,
        "result_ref": outcome.result_ref,
        "now": now,
    }


def counts_of(task: Task, running: int, retry_wait: int) -> TaskCounts:
    """Combine a task's stored counters with its counted open states."""
    settled = task.settled
    pending = (
        task.total_documents
        - settled.completed
        - settled.failed
        - settled.cancelled
        - running
        - retry_wait
    )
    return TaskCounts(
        total=task.total_documents,
        pending=max(pending, 0),
        running=running,
        retry_wait=retry_wait,
        completed=settled.completed,
        failed=settled.failed,
        cancelled=settled.cancelled,
    )


def task_from_row(row: sqlite3.Row) -> Task:
    """Build a :class:`Task` from a ``tasks`` row."""
    return Task(
        task_id=row["task_id"],
        tenant=row["tenant"],
        type=row["type"],
        state=row["state"],
        config=json.loads(row["config"]),
        total_documents=row["total_documents"],
        settled={
            "completed": row["n_completed"],
            "failed": row["n_failed"],
            "cancelled": row["n_cancelled"],
        },
        tokens={"prompt": row["prompt_tokens"], "completion": row["completion_tokens"]},
        sealed=bool(row["sealed"]),
        version=row["version"],
        reason=row["reason"],
        **{name: dt(row[name]) for name in TIMESTAMPS},
    )


def checkpoint_from_row(row: sqlite3.Row) -> DocumentCheckpoint:
    """Build a :class:`DocumentCheckpoint` from a ``documents`` row."""
    log = json.loads(row["attempt_log"])
    for entry in log:
        entry["started_at"] = dt(entry["started_at"]) or dt(row["created_at"])
        entry["finished_at"] = dt(entry["finished_at"])
    return DocumentCheckpoint(
        task_id=row["task_id"],
        doc_id=row["doc_id"],
        seq=row["seq"],
        state=row["state"],
        attempts=row["attempts"],
        fence=row["fence"],
        lease_owner=row["lease_owner"],
        lease_expires_at=dt(row["lease_expires_at"]),
        next_attempt_at=dt(row["next_attempt_at"]),
        error=None if row["error"] is None else json.loads(row["error"]),
        tokens={"prompt": row["prompt_tokens"], "completion": row["completion_tokens"]},
        attempt_log=log,
        result_ref=row["result_ref"],
        created_at=dt(row["created_at"]),
        started_at=dt(row["started_at"]),
        finished_at=dt(row["finished_at"]),
        updated_at=dt(row["updated_at"]),
    )
