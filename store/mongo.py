"""The MongoDB checkpoint store.

Written for a real MongoDB replica set (``w="majority"``, majority reads,
retryable writes) and restricted to what the mongoeco server used in tests also
supports: no change streams, no ``distinct``, no ``$filter`` in find
projections.

Collections:

- ``meta``: the schema version, ``{_id: "schema", version: N}``.
- ``tasks``: one record per task with its stored counters (``settled``,
  ``tokens``), a ``version`` and its ``history`` array, so that a transition and
  its history entry are one atomic ``findAndModify``; an entry's ``seq`` is the
  version it produced (creation is entry 1). Normal reads leave the history out.
- ``documents``: one checkpoint per document, ``_id = "<task_id>:<doc_id>"``
  (task ids never contain ``:``).
- ``contents``: the text or URI of each document, written once at creation.
- ``results``: each document's result with the fence that wrote it.

Cost on the work path, in round trips: ``claim(limit=1)`` is one
``findAndModify`` and never touches the task; ``settle`` is one fenced write of
the documents plus one ``$inc`` of the task's counters. Counters are therefore
not updated in the same write as the documents: a crash between the two leaves
them short, and :meth:`MongoStore.recount` repairs them from the documents.

Attempt records are appended with an update pipeline (``$concatArrays``) rather
than ``$push``, because the record copies the attempt number, owner and start
time out of the document being settled, which only a pipeline can read.

Times are stored as fixed-width UTC ISO-8601 strings with microseconds, not BSON
dates: BSON keeps milliseconds only, and the Protocol hands back the caller's
instants exactly (``next_attempt_at``, lease ends). Fixed width keeps string
order equal to time order, so range filters and indexes behave as on dates.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from store.base import DEFAULT_BATCH, SCHEMA_VERSION, Documents
from store.batches import batched
from store.errors import (
    DocumentNotFound,
    DuplicateDocument,
    SchemaVersionError,
    StaleFence,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    TransitionRefused,
)
from store.models import (
    AttemptOutcome,
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
    SETTLED_DOCUMENT_STATES,
    DocumentState,
    TaskState,
    check_task_transition,
    task_sources,
)
from store.transitions import transition_fields

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Doc = dict[str, Any]
Database = AsyncDatabase[Doc]
Migration = Callable[[Database], Awaitable[None]]

DEFAULT_DATABASE = "taskpoint"
DUPLICATE_KEY = 11000
SCHEMA_ID = "schema"

# Migration ``n`` upgrades the data from schema version ``n`` to ``n + 1``.
MIGRATIONS: dict[int, Migration] = {}

D = DocumentState
T = TaskState
OPEN_STATES = [D.RETRY_WAIT.value, D.PENDING.value]
TASK_FIELDS = frozenset(Task.model_fields)
DOCUMENT_FIELDS = frozenset(DocumentCheckpoint.model_fields)
NO_HISTORY = {"history": 0}
ATTEMPT_OUTCOMES: dict[DocumentState, AttemptOutcome] = {
    D.COMPLETED: "completed",
    D.FAILED: "failed",
    D.RETRY_WAIT: "retry_wait",
    D.CANCELLED: "cancelled",
    D.PENDING: "interrupted",
}
WORKER_LOST = {"type": "WorkerLost", "message": "lease expired", "permanent": False}

DOCUMENT_INDEXES: list[list[tuple[str, int]]] = [
    [("task_id", ASCENDING), ("state", ASCENDING), ("seq", ASCENDING)],
    # Claim order is retry_wait before pending, then seq: "retry_wait" sorts
    # after "pending", so a descending state key yields exactly that order.
    [("task_id", ASCENDING), ("state", DESCENDING), ("seq", ASCENDING)],
    [("task_id", ASCENDING), ("state", ASCENDING), ("next_attempt_at", ASCENDING)],
    [("task_id", ASCENDING), ("state", ASCENDING), ("lease_expires_at", ASCENDING)],
    [("task_id", ASCENDING), ("seq", ASCENDING)],
    [
        ("task_id", ASCENDING),
        ("state", ASCENDING),
        ("finished_at", ASCENDING),
        ("seq", ASCENDING),
    ],
]
TASK_INDEXES: list[list[tuple[str, int]]] = [
    [("tenant", ASCENDING), ("created_at", DESCENDING)],
    [("created_at", DESCENDING)],
]


def _driver_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn PyMongo's connection failures into :class:`StoreUnavailable`."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ConnectionFailure as err:  # ServerSelectionTimeoutError included
            raise StoreUnavailable(f"MongoDB unreachable: {err}") from err

    return wrapper


def _now(now: datetime | None) -> datetime:
    """Return ``now``, or the clock, as an aware UTC datetime."""
    return (now or utcnow()).astimezone(UTC)


def _ts(moment: datetime) -> str:
    """Return the stored form of an instant: fixed-width UTC ISO-8601.

    BSON dates keep milliseconds only, and the Protocol hands back the
    caller's instants exactly. Fixed width makes string order time order, so
    range filters and index order on these fields work as they would on dates.
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stored(fields: Mapping[str, Any]) -> Doc:
    """Return ``fields`` with every datetime in its stored form."""
    return {k: _ts(v) if isinstance(v, datetime) else v for k, v in fields.items()}


def _doc_key(task_id: str, doc_id: str) -> str:
    return f"{task_id}:{doc_id}"


def _won(current: Mapping[str, Doc] | None, key: str, field: str, mark: str) -> bool:
    """Tell whether a marked write took effect (None: every write matched)."""
    return current is None or current.get(key, {}).get(field) == mark


def _lit(value: Any) -> Doc:
    """Wrap a value so that an update pipeline never reads it as a field path."""
    return {"$literal": value}


def _task_from(doc: Mapping[str, Any]) -> Task:
    fields = {k: v for k, v in doc.items() if k in TASK_FIELDS}
    return Task(task_id=doc["_id"], **fields)


def _checkpoint_from(doc: Mapping[str, Any]) -> DocumentCheckpoint:
    fields = {k: v for k, v in doc.items() if k in DOCUMENT_FIELDS}
    return DocumentCheckpoint(**fields)


def _transition_from(entry: Mapping[str, Any]) -> Transition:
    return Transition(**entry)


def _append_attempt(
    outcome: AttemptOutcome,
    now: datetime,
    tokens: Mapping[str, int],
    error: Mapping[str, Any] | None,
) -> Doc:
    """Return the expression that appends the ending attempt's record.

    Expressions in one ``$set`` stage read the document as it was before the
    stage, so the record copies the attempt number, fence, owner and start
    time of the attempt that is ending, although the same stage clears the
    lease and may refund the attempt.
    """
    record = {
        "attempt": "$attempts",
        "fence": "$fence",
        "owner": "$lease_owner",
        "started_at": "$started_at",
        "finished_at": _lit(_ts(now)),
        "outcome": _lit(outcome),
        "tokens": _lit(dict(tokens)),
        "error": _lit(None if error is None else dict(error)),
    }
    return {"$concatArrays": [{"$ifNull": ["$attempt_log", []]}, [record]]}


def _add_tokens(tokens: Mapping[str, int]) -> Doc:
    return {
        f"tokens.{part}": {"$add": [{"$ifNull": [f"$tokens.{part}", 0]}, value]}
        for part, value in tokens.items()
    }


def _settle_pipeline(outcome: Outcome, mark: str, now: datetime) -> list[Doc]:
    """Return the update pipeline that writes one outcome and its attempt record."""
    state = outcome.state
    retry_at = outcome.next_attempt_at if state is D.RETRY_WAIT else None
    error = outcome.error.model_dump() if outcome.error else None
    tokens = outcome.tokens.model_dump()
    fields: Doc = {
        "state": _lit(state.value),
        "settle_mark": _lit(mark),
        "lease_owner": None,
        "lease_expires_at": None,
        "next_attempt_at": _lit(retry_at and _ts(retry_at)),
        "error": _lit(error),
        "finished_at": _lit(_ts(now) if state in SETTLED_DOCUMENT_STATES else None),
        "updated_at": _lit(_ts(now)),
        "attempt_log": _append_attempt(ATTEMPT_OUTCOMES[state], now, tokens, error),
        **_add_tokens(tokens),
    }
    if state is D.PENDING:
        # An interrupted attempt is given back: it was not the document's fault.
        fields["attempts"] = {"$add": ["$attempts", -1]}
    if outcome.result_ref is not None:
        fields["result_ref"] = _lit(outcome.result_ref)
    return [{"$set": fields}]


def _reclaim_pipeline(fail: bool, mark: str, now: datetime) -> list[Doc]:
    """Return the pipeline that ends an expired lease: failed, or back to pending.

    The attempt is not refunded: a document whose worker keeps dying must run
    out of attempts instead of blocking its task forever.
    """
    no_tokens = {"prompt": 0, "completion": 0}
    fields: Doc = {
        "state": _lit(D.FAILED.value if fail else D.PENDING.value),
        "reclaim_mark": _lit(mark),
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": _lit(_ts(now)),
        "attempt_log": _append_attempt("lost", now, no_tokens, WORKER_LOST),
    }
    if fail:
        fields["error"] = _lit(WORKER_LOST)
        fields["finished_at"] = _lit(_ts(now))
    return [{"$set": fields}]


def _counter_inc(accepted: Iterable[Outcome]) -> Doc:
    """Return the task ``$inc`` for accepted outcomes; zero terms are left out."""
    inc: dict[str, int] = {}
    for outcome in accepted:
        if outcome.state in SETTLED_DOCUMENT_STATES:
            key = f"settled.{outcome.state.value}"
            inc[key] = inc.get(key, 0) + 1
        for part, value in outcome.tokens.model_dump().items():
            if value:
                inc[f"tokens.{part}"] = inc.get(f"tokens.{part}", 0) + value
    return inc


def _counts_of(task: Task, open_counts: Mapping[str, int]) -> TaskCounts:
    """Combine a task's stored counters with the counted open documents.

    Pending is not stored: it is what remains of the total.
    """
    running = open_counts.get(D.RUNNING.value, 0)
    waiting = open_counts.get(D.RETRY_WAIT.value, 0)
    settled = task.settled
    finished = settled.completed + settled.failed + settled.cancelled
    return TaskCounts(
        total=task.total_documents,
        pending=max(task.total_documents - running - waiting - finished, 0),
        running=running,
        retry_wait=waiting,
        completed=settled.completed,
        failed=settled.failed,
        cancelled=settled.cancelled,
    )


class MongoStore:
    """A :class:`~store.base.CheckpointStore` on MongoDB (or mongoeco).

    Args:
        url: A MongoDB connection string.
        database: The database name; defaults to the one in the URL's path,
            else ``"taskpoint"``.
        client_options: Extra keyword arguments for ``AsyncMongoClient``; they
            override the store's defaults (majority writes and reads,
            retryable writes, aware UTC datetimes).
    """

    def __init__(
        self,
        url: str,
        database: str | None = None,
        *,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self._url = url
        self._database_name = database
        self._client_options = dict(client_options or {})
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: Database | None = None

    # Lifecycle

    @_driver_errors
    async def start(self) -> None:
        """Connect, check or migrate the schema version, create indexes.

        Raises:
            SchemaVersionError: the data is newer than this code.
            StoreUnavailable: the store cannot be reached.
        """
        if self._client is None:
            options: dict[str, Any] = {
                "w": "majority",
                "readConcernLevel": "majority",
                "retryWrites": True,
                "tz_aware": True,
                "tzinfo": UTC,
                **self._client_options,
            }
            self._client = AsyncMongoClient(self._url, **options)
            name = self._database_name
            self._db = (
                self._client.get_database(name)
                if name
                else self._client.get_default_database(DEFAULT_DATABASE)
            )
        await self._check_schema()
        await self._create_indexes()
        logger.info("mongo store started database=%s", self._database.name)

    async def stop(self) -> None:
        """Close connections; the store may be started again."""
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def _check_schema(self) -> None:
        meta = self._database["meta"]
        found = await meta.find_one({"_id": SCHEMA_ID})
        if found is None:
            try:
                await meta.insert_one({"_id": SCHEMA_ID, "version": SCHEMA_VERSION})
                return
            except DuplicateKeyError:
                # Another process started at the same moment and wrote it.
                found = await meta.find_one({"_id": SCHEMA_ID})
        version = int(found["version"]) if found else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(version, SCHEMA_VERSION)
        await self._migrate(version)

    async def _migrate(self, version: int) -> None:
        """Run the migrations from ``version`` up to :data:`SCHEMA_VERSION`.

        The version is written after each step, so that a crash resumes at the
        step that did not finish; migrations must therefore be idempotent.
        """
        meta = self._database["meta"]
        for step in range(version, SCHEMA_VERSION):
            migration = MIGRATIONS.get(step)
            if migration is None:
                raise StoreError(
                    f"no migration from schema version {step!r} to {step + 1!r}"
                )
            logger.info("migrating schema from version %d to %d", step, step + 1)
            await migration(self._database)
            await meta.update_one(
                {"_id": SCHEMA_ID, "version": step}, {"$set": {"version": step + 1}}
            )

    async def _create_indexes(self) -> None:
        for keys in DOCUMENT_INDEXES:
            await self._documents.create_index(keys)
        for keys in TASK_INDEXES:
            await self._tasks.create_index(keys)

    @property
    def _database(self) -> Database:
        if self._db is None:
            raise StoreError("MongoStore is not started; call start() first")
        return self._db

    @property
    def _tasks(self) -> AsyncCollection[Doc]:
        return self._database["tasks"]

    @property
    def _documents(self) -> AsyncCollection[Doc]:
        return self._database["documents"]

    @property
    def _contents(self) -> AsyncCollection[Doc]:
        return self._database["contents"]

    @property
    def _results(self) -> AsyncCollection[Doc]:
        return self._database["results"]

    # Tenants

    @_driver_errors
    async def put_token(
        self, token_hash: str, tenant: str, *, label: str | None = None
    ) -> None:
        """Store an API token's hash for ``tenant`` (never the token itself)."""
        await self._database["tokens"].insert_one(
            {
                "_id": token_hash,
                "tenant": tenant,
                "label": label,
                "created_at": _ts(utcnow()),
            }
        )

    @_driver_errors
    async def tenant_of_token(self, token_hash: str) -> str | None:
        """Return the tenant whose token has this hash, or None."""
        found = await self._database["tokens"].find_one({"_id": token_hash})
        return None if found is None else str(found["tenant"])

    # Tasks

    @_driver_errors
    async def create_task(
        self, new: NewTask, documents: Documents, *, batch_size: int = DEFAULT_BATCH
    ) -> Task:
        """Create a task in ``pending`` and store its documents in batches.

        The task record is written first and sealed last, so that a crash
        halfway leaves an unsealed task that is never started.

        Raises:
            DuplicateDocument: a document id was given twice; nothing of the
                task is left behind.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size!r}")
        now = _ts(_now(None))
        await self._insert_task(new, now)
        try:
            total = await self._insert_documents(
                new.task_id, documents, batch_size, now
            )
        except DuplicateDocument:
            await self._delete_task(new.task_id)
            raise
        except Exception:
            # A failing document stream leaves nothing either; if the store is
            # gone too, the task stays unsealed and is never started.
            with contextlib.suppress(ConnectionFailure):
                await self._delete_task(new.task_id)
            raise
        task = await self._tasks.find_one_and_update(
            {"_id": new.task_id},
            {"$set": {"total_documents": total, "sealed": True, "updated_at": now}},
            projection=NO_HISTORY,
            return_document=ReturnDocument.AFTER,
        )
        if task is None:
            raise TaskNotFound(new.task_id)
        logger.info("task created task_id=%s documents=%d", new.task_id, total)
        return _task_from(task)

    async def _insert_task(self, new: NewTask, now: str) -> None:
        record = {
            "_id": new.task_id,
            "tenant": new.tenant,
            "type": new.type,
            "state": T.PENDING.value,
            "config": new.config.model_dump(),
            "total_documents": 0,
            "settled": {"completed": 0, "failed": 0, "cancelled": 0},
            "tokens": {"prompt": 0, "completion": 0},
            "sealed": False,
            "version": 1,
            "reason": None,
            "created_at": now,
            "updated_at": now,
            "history": [
                {
                    "seq": 1,
                    "from_state": None,
                    "to_state": T.PENDING.value,
                    "at": now,
                    "reason": "created",
                    "request_id": None,
                    "accepted": True,
                }
            ],
        }
        try:
            await self._tasks.insert_one(record)
        except DuplicateKeyError as err:
            raise StoreError(f"task {new.task_id!r} already exists") from err

    async def _insert_documents(
        self, task_id: str, documents: Documents, batch_size: int, now: str
    ) -> int:
        """Store documents and contents batch by batch; return how many."""
        seq = 0
        async for batch in batched(documents, batch_size):
            seen: set[str] = set()
            checkpoints: list[Doc] = []
            contents: list[Doc] = []
            for item in batch:
                if item.doc_id in seen:
                    raise DuplicateDocument(task_id, item.doc_id)
                seen.add(item.doc_id)
                key = _doc_key(task_id, item.doc_id)
                checkpoints.append(self._new_checkpoint(task_id, item, seq, now))
                contents.append({"_id": key, "text": item.text, "uri": item.uri})
                seq += 1
            await self._insert_batch(task_id, self._documents, checkpoints)
            await self._insert_batch(task_id, self._contents, contents)
        return seq

    @staticmethod
    def _new_checkpoint(task_id: str, item: DocumentInput, seq: int, now: str) -> Doc:
        return {
            "_id": _doc_key(task_id, item.doc_id),
            "task_id": task_id,
            "doc_id": item.doc_id,
            "seq": seq,
            "state": D.PENDING.value,
            "attempts": 0,
            "fence": 0,
            "tokens": {"prompt": 0, "completion": 0},
            "attempt_log": [],
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    async def _insert_batch(
        task_id: str, collection: AsyncCollection[Doc], records: list[Doc]
    ) -> None:
        """Insert one batch; an id already stored means a duplicate document."""
        try:
            await collection.insert_many(records, ordered=True)
        except BulkWriteError as err:
            errors = err.details.get("writeErrors", [])
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            key = str(errors[0].get("op", {}).get("_id", ""))
            raise DuplicateDocument(task_id, key.partition(":")[2]) from err

    async def _delete_task(self, task_id: str) -> None:
        """Remove every trace of a task that could not be created."""
        # Task ids hold no regex metacharacters (NewTask's pattern), and an
        # anchored prefix is answered from the _id index.
        prefix = {"_id": {"$regex": f"^{task_id}:"}}
        await self._documents.delete_many({"task_id": task_id})
        await self._contents.delete_many(prefix)
        await self._results.delete_many(prefix)
        await self._tasks.delete_one({"_id": task_id})

    @_driver_errors
    async def get_task(self, task_id: str, tenant: str | None = None) -> Task:
        """Return a task; with ``tenant``, only if it belongs to that tenant.

        Raises:
            TaskNotFound: no such task (for that tenant).
        """
        query: Doc = {"_id": task_id}
        if tenant is not None:
            query["tenant"] = tenant
        doc = await self._tasks.find_one(query, NO_HISTORY)
        if doc is None:
            raise TaskNotFound(task_id)
        return _task_from(doc)

    @_driver_errors
    async def list_tasks(
        self,
        tenant: str | None = None,
        *,
        states: Iterable[TaskState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Task]:
        """Return tasks, newest first, optionally of one tenant and some states."""
        if limit <= 0:
            return []
        query: Doc = {}
        if tenant is not None:
            query["tenant"] = tenant
        if states is not None:
            query["state"] = {"$in": [TaskState(s).value for s in states]}
        if before is not None:
            query["created_at"] = {"$lt": _ts(before)}
        cursor = (
            self._tasks.find(query, NO_HISTORY)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [_task_from(doc) async for doc in cursor]

    @_driver_errors
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
        """Move a task to ``target`` with a compare-and-set, appending history.

        The state check, the new fields and the history entry go in one
        ``findAndModify`` filtered on the version read; losing that race means
        reading again and re-checking, never overwriting.

        Raises:
            TaskNotFound: no such task.
            TransitionRefused: the current state does not allow it.
        """
        target = TaskState(target)
        moment = _now(now)
        wanted = None if expected is None else frozenset(map(TaskState, expected))
        allowed = task_sources(target) & (wanted or frozenset(TaskState))
        while True:
            task = await self._read_task(task_id)
            if wanted is not None and task.state not in wanted:
                names = ", ".join(sorted(s.value for s in wanted))
                why = f"expected one of {names}"
                raise TransitionRefused(task_id, task.state, target, why)
            check_task_transition(task_id, task.state, target)
            update = self._transition_update(task, target, moment, reason, request_id)
            updated = await self._tasks.find_one_and_update(
                {
                    "_id": task_id,
                    "version": task.version,
                    "state": {"$in": [s.value for s in allowed]},
                },
                update,
                projection=NO_HISTORY,
                return_document=ReturnDocument.AFTER,
            )
            if updated is not None:
                logger.info(
                    "task transition task_id=%s from=%s to=%s reason=%s",
                    task_id,
                    task.state.value,
                    target.value,
                    reason,
                )
                return _task_from(updated)
            # Someone else moved the task since the read: re-check from scratch.
            logger.debug("task version moved, retrying task_id=%s", task_id)

    def _transition_update(
        self,
        task: Task,
        target: TaskState,
        now: datetime,
        reason: str | None,
        request_id: str | None,
    ) -> Doc:
        """Return the update that moves ``task`` and appends its history entry."""
        fields = transition_fields(task, target, reason, now)
        return {
            "$set": {"state": target.value, "updated_at": _ts(now), **_stored(fields)},
            "$inc": {"version": 1},
            "$push": {
                "history": self._history_entry(task, target, now, reason, request_id)
            },
        }

    @staticmethod
    def _history_entry(
        task: Task,
        target: TaskState,
        at: datetime,
        reason: str | None,
        request_id: str | None,
        *,
        accepted: bool = True,
    ) -> Doc:
        # seq is the version after the write, so history order is version order.
        return {
            "seq": task.version + 1,
            "from_state": task.state.value,
            "to_state": target.value,
            "at": _ts(at),
            "reason": reason,
            "request_id": request_id,
            "accepted": accepted,
        }

    async def _read_task(self, task_id: str) -> Task:
        doc = await self._tasks.find_one({"_id": task_id}, NO_HISTORY)
        if doc is None:
            raise TaskNotFound(task_id)
        return _task_from(doc)

    @_driver_errors
    async def record_rejection(
        self,
        task_id: str,
        target: TaskState,
        *,
        reason: str,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Transition:
        """Append a refused request to the task's history without a transition.

        Raises:
            TaskNotFound: no such task.
        """
        target = TaskState(target)
        moment = _now(now)
        while True:
            task = await self._read_task(task_id)
            entry = self._history_entry(
                task, target, moment, reason, request_id, accepted=False
            )
            updated = await self._tasks.update_one(
                {"_id": task_id, "version": task.version},
                {"$inc": {"version": 1}, "$push": {"history": entry}},
            )
            if updated.matched_count:
                logger.warning(
                    "request rejected task_id=%s state=%s target=%s reason=%s",
                    task_id,
                    task.state.value,
                    target.value,
                    reason,
                )
                return _transition_from(entry)

    @_driver_errors
    async def history(self, task_id: str, since: int = 0) -> list[Transition]:
        """Return the history entries with ``seq`` greater than ``since``."""
        # An aggregate, because mongoeco has no $filter in find projections;
        # either way only the entries after ``since`` cross the wire.
        pipeline: list[Doc] = [
            {"$match": {"_id": task_id}},
            {
                "$project": {
                    "_id": 0,
                    "history": {
                        "$filter": {
                            "input": "$history",
                            "as": "h",
                            "cond": {"$gt": ["$$h.seq", since]},
                        }
                    },
                }
            },
        ]
        cursor = await self._tasks.aggregate(pipeline)
        found = await cursor.to_list()
        if not found:
            return []
        entries = found[0].get("history") or []
        return sorted((_transition_from(e) for e in entries), key=lambda t: t.seq)

    @_driver_errors
    async def counts(self, task_id: str) -> TaskCounts:
        """Return every document of the task counted by state.

        One read of the task's counters and one indexed count of its running
        and waiting documents; pending is what remains of the total.

        Raises:
            TaskNotFound: no such task.
        """
        return (await self.task_status(task_id))[1]

    @_driver_errors
    async def task_status(
        self, task_id: str, tenant: str | None = None
    ) -> tuple[Task, TaskCounts]:
        """Return a task and its counts: one read of the task, one indexed count.

        Raises:
            TaskNotFound: no such task (for that tenant).
        """
        task = await self.get_task(task_id, tenant)
        cursor = await self._documents.aggregate(
            [
                {
                    "$match": {
                        "task_id": task_id,
                        "state": {"$in": [D.RUNNING.value, D.RETRY_WAIT.value]},
                    }
                },
                {"$group": {"_id": "$state", "n": {"$sum": 1}}},
            ]
        )
        open_counts = {row["_id"]: int(row["n"]) async for row in cursor}
        return task, _counts_of(task, open_counts)

    @_driver_errors
    async def recount(self, task_id: str) -> TaskCounts:
        """Rebuild the task's stored counters and token totals from its documents.

        Reads every document of the task. Run it on a quiet task: a settle
        that lands between the aggregate and the ``$set`` would be lost from
        the counters until the next recount.

        Raises:
            TaskNotFound: no such task.
        """
        cursor = await self._documents.aggregate(
            [
                {"$match": {"task_id": task_id}},
                {
                    "$group": {
                        "_id": "$state",
                        "n": {"$sum": 1},
                        "prompt": {"$sum": "$tokens.prompt"},
                        "completion": {"$sum": "$tokens.completion"},
                    }
                },
            ]
        )
        rows = {row["_id"]: row async for row in cursor}
        by_state = {
            s.value: int(rows[s.value]["n"]) if s.value in rows else 0 for s in D
        }
        fields = {
            "total_documents": sum(by_state.values()),
            "settled": {s: by_state[s] for s in ("completed", "failed", "cancelled")},
            "tokens": {
                "prompt": sum(int(r["prompt"]) for r in rows.values()),
                "completion": sum(int(r["completion"]) for r in rows.values()),
            },
        }
        result = await self._tasks.update_one({"_id": task_id}, {"$set": fields})
        if not result.matched_count:
            raise TaskNotFound(task_id)
        logger.info("counters rebuilt task_id=%s counts=%s", task_id, by_state)
        return TaskCounts(total=fields["total_documents"], **by_state)

    # Documents on the work path

    @staticmethod
    def _claimable(task_id: str, now: datetime, doc_ids: Sequence[str] | None) -> Doc:
        query: Doc = {
            "task_id": task_id,
            "state": {"$in": OPEN_STATES},
            "$or": [
                {"state": D.PENDING.value},
                {"next_attempt_at": {"$lte": _ts(now)}},
            ],
        }
        if doc_ids is not None:
            query["_id"] = {"$in": [_doc_key(task_id, d) for d in doc_ids]}
        return query

    @staticmethod
    def _claim_update(owner: str, expires: datetime, now: datetime) -> Doc:
        return {
            "$set": {
                "state": D.RUNNING.value,
                "lease_owner": owner,
                "lease_expires_at": _ts(expires),
                "next_attempt_at": None,
                "started_at": _ts(now),
                "updated_at": _ts(now),
            },
            # The fence only ever grows, and only here: a write carrying an
            # older fence belongs to a lease that has been superseded.
            "$inc": {"fence": 1, "attempts": 1},
        }

    @_driver_errors
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
        """Lease up to ``limit`` claimable documents of a task to ``owner``.

        With ``doc_ids``, only among those; the others are skipped. One
        document costs one ``findAndModify``; more cost one find of candidates
        and one fenced bulk write (plus one find when another claimer won some
        of them). The task's record is not touched.
        """
        if limit <= 0 or (doc_ids is not None and not doc_ids):
            return []
        moment = _now(now)
        expires = moment + timedelta(seconds=lease_seconds)
        query = self._claimable(task_id, moment, doc_ids)
        if limit == 1:
            return await self._claim_one(query, owner, expires, moment)
        return await self._claim_many(query, owner, limit, expires, moment)

    async def _claim_one(
        self, query: Doc, owner: str, expires: datetime, now: datetime
    ) -> list[Claim]:
        doc = await self._documents.find_one_and_update(
            query,
            self._claim_update(owner, expires, now),
            sort=[("state", DESCENDING), ("seq", ASCENDING)],
            projection={"doc_id": 1, "fence": 1, "attempts": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return []
        return [
            Claim(
                doc_id=doc["doc_id"],
                fence=doc["fence"],
                attempt=doc["attempts"],
                lease_expires_at=expires,
            )
        ]

    async def _claim_many(
        self, query: Doc, owner: str, limit: int, expires: datetime, now: datetime
    ) -> list[Claim]:
        cursor = (
            self._documents.find(query, {"doc_id": 1, "fence": 1, "attempts": 1})
            .sort([("state", DESCENDING), ("seq", ASCENDING)])
            .limit(limit)
        )
        candidates = await cursor.to_list()
        if not candidates:
            return []
        base = self._claim_update(owner, expires, now)
        mark = uuid.uuid4().hex
        ops = [
            (
                # Same fence and still claimable: nobody claimed it since the read.
                {"_id": c["_id"], "fence": c["fence"], "state": {"$in": OPEN_STATES}},
                {**base, "$set": {**base["$set"], "claim_mark": f"{mark}:{i}"}},
            )
            for i, c in enumerate(candidates)
        ]
        current = await self._write_marked(ops, "claim_mark")
        # A won write added one to the fence and the attempts that were read.
        return [
            Claim(
                doc_id=c["doc_id"],
                fence=c["fence"] + 1,
                attempt=c["attempts"] + 1,
                lease_expires_at=expires,
            )
            for i, c in enumerate(candidates)
            if _won(current, c["_id"], "claim_mark", f"{mark}:{i}")
        ]

    async def _write_marked(
        self, ops: Sequence[tuple[Doc, Doc | list[Doc]]], mark_field: str
    ) -> dict[str, Doc] | None:
        """Apply fenced updates that each set a unique mark; learn which won.

        Returns None when every update matched (the common case, one round
        trip). Otherwise one more read returns the documents as they are now,
        keyed by ``_id``: an update won exactly when its mark is there.
        """
        if len(ops) == 1:
            result = await self._documents.update_one(ops[0][0], ops[0][1])
            matched = result.matched_count
        else:
            # Ordered, so that two outcomes for one document in one call are
            # applied in the order given.
            bulk = await self._documents.bulk_write(
                [UpdateOne(f, u) for f, u in ops], ordered=True
            )
            matched = bulk.matched_count
        if matched == len(ops):
            return None
        ids = list({f["_id"] for f, _ in ops})
        cursor = self._documents.find(
            {"_id": {"$in": ids}}, {mark_field: 1, "fence": 1, "state": 1}
        )
        return {doc["_id"]: doc async for doc in cursor}

    @_driver_errors
    async def extend_leases(
        self,
        task_id: str,
        leases: Sequence[tuple[str, int]],
        *,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[str]:
        """Extend the leases ``(doc_id, fence)`` that are still current.

        Returns:
            The ids of the documents whose lease was extended; a missing id
            means the lease was lost and the work must stop.
        """
        if not leases:
            return []
        moment = _now(now)
        expires = moment + timedelta(seconds=lease_seconds)
        marks = [f"{uuid.uuid4().hex}:{i}" for i in range(len(leases))]
        ops = [
            (
                {"_id": _doc_key(task_id, d), "fence": f, "state": D.RUNNING.value},
                {
                    "$set": {
                        "lease_expires_at": _ts(expires),
                        "updated_at": _ts(moment),
                        "lease_mark": mark,
                    }
                },
            )
            for (d, f), mark in zip(leases, marks, strict=True)
        ]
        current = await self._write_marked(ops, "lease_mark")
        return [
            doc_id
            for (doc_id, _), mark in zip(leases, marks, strict=True)
            if _won(current, _doc_key(task_id, doc_id), "lease_mark", mark)
        ]

    @_driver_errors
    async def settle(
        self, task_id: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[SettleResult]:
        """Write the outcomes of claimed documents, each under its fencing token.

        One fenced write for all outcomes (plus one read when some did not
        match), then one ``$inc`` of the task's counters for the accepted ones.
        A crash between the two leaves the counters short until ``recount``.

        Returns:
            One of ``accepted``, ``duplicate`` or ``stale`` per outcome, in order.
        """
        if not outcomes:
            return []
        moment = _now(now)
        mark = uuid.uuid4().hex
        ops = [
            (
                {
                    "_id": _doc_key(task_id, o.doc_id),
                    "fence": o.fence,
                    "state": D.RUNNING.value,
                },
                _settle_pipeline(o, f"{mark}:{i}", moment),
            )
            for i, o in enumerate(outcomes)
        ]
        current = await self._write_marked(ops, "settle_mark")
        results = [
            self._classify(task_id, o, f"{mark}:{i}", current)
            for i, o in enumerate(outcomes)
        ]
        accepted = [
            o for o, r in zip(outcomes, results, strict=True) if r == "accepted"
        ]
        inc = _counter_inc(accepted)
        if inc:
            await self._tasks.update_one({"_id": task_id}, {"$inc": inc})
        return results

    @staticmethod
    def _classify(
        task_id: str, outcome: Outcome, mark: str, current: dict[str, Doc] | None
    ) -> SettleResult:
        if current is None:
            return "accepted"
        doc = current.get(_doc_key(task_id, outcome.doc_id))
        if doc is not None and doc.get("settle_mark") == mark:
            return "accepted"
        if (
            doc is not None
            and doc.get("fence") == outcome.fence
            and doc.get("state") == outcome.state.value
        ):
            return "duplicate"
        logger.warning(
            "stale settle refused task_id=%s doc_id=%s fence=%d",
            task_id,
            outcome.doc_id,
            outcome.fence,
        )
        return "stale"

    @_driver_errors
    async def put_result(
        self, task_id: str, doc_id: str, fence: int, result: dict[str, Any]
    ) -> str:
        """Store a document's result under a deterministic id and return the id.

        Raises:
            StaleFence: a newer attempt already stored a result.
        """
        key = _doc_key(task_id, doc_id)
        try:
            # The filter matches only a result of the same or an older fence;
            # when a newer one exists the upsert tries to insert a second
            # record with the same _id, and the unique _id refuses it.
            await self._results.update_one(
                {"_id": key, "fence": {"$lte": fence}},
                {
                    "$set": {
                        "task_id": task_id,
                        "doc_id": doc_id,
                        "fence": fence,
                        "result": result,
                        "updated_at": _ts(_now(None)),
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError as err:
            raise StaleFence(task_id, doc_id, fence) from err
        return key

    @_driver_errors
    async def get_result(self, task_id: str, doc_id: str) -> dict[str, Any] | None:
        """Return a document's stored result, or None."""
        doc = await self._results.find_one({"_id": _doc_key(task_id, doc_id)})
        if doc is None:
            return None
        result: dict[str, Any] = doc.get("result") or {}
        return result

    @_driver_errors
    async def put_task_result(self, task_id: str, result: dict[str, Any]) -> None:
        """Store (replace) the task's own result: a finalize phase's checkpoint."""
        await self._database["task_results"].replace_one(
            {"_id": task_id}, {"_id": task_id, "result": result}, upsert=True
        )

    @_driver_errors
    async def get_task_result(self, task_id: str) -> dict[str, Any] | None:
        """Return the task's own result, or None."""
        doc = await self._database["task_results"].find_one({"_id": task_id})
        if doc is None:
            return None
        result: dict[str, Any] = doc.get("result") or {}
        return result

    @_driver_errors
    async def page_completed(
        self,
        task_id: str,
        *,
        after: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return completed documents in the order they finished, after ``after``."""
        query: Doc = {"task_id": task_id, "state": D.COMPLETED.value}
        if after is not None:
            at = _ts(after[0])
            query["$or"] = [
                {"finished_at": {"$gt": at}},
                {"finished_at": at, "seq": {"$gt": after[1]}},
            ]
        cursor = (
            self._documents.find(query)
            .sort([("finished_at", ASCENDING), ("seq", ASCENDING)])
            .limit(limit)
        )
        return [_checkpoint_from(doc) async for doc in cursor]

    @_driver_errors
    async def load_contents(
        self, task_id: str, doc_ids: Sequence[str]
    ) -> dict[str, DocumentContent]:
        """Return the content (text or URI) of the given documents."""
        if not doc_ids:
            return {}
        keys = [_doc_key(task_id, d) for d in doc_ids]
        cursor = self._contents.find({"_id": {"$in": keys}})
        found: dict[str, DocumentContent] = {}
        async for doc in cursor:
            doc_id = str(doc["_id"]).partition(":")[2]
            found[doc_id] = DocumentContent(
                doc_id=doc_id, text=doc.get("text"), uri=doc.get("uri")
            )
        return found

    # Documents on the control path

    @_driver_errors
    async def reclaim_expired(
        self, task_id: str, *, max_attempts: int, now: datetime | None = None
    ) -> ReclaimReport:
        """Release the running documents whose lease expired before ``now``.

        A document whose attempts reached ``max_attempts`` is failed with a
        ``WorkerLost`` error; the others go back to ``pending`` (keeping the
        attempt: a document that keeps killing its worker must run out).
        Each write is fenced, so a lease extended or settled meanwhile stays.
        """
        moment = _now(now)
        expired = self._documents.find(
            {
                "task_id": task_id,
                "state": D.RUNNING.value,
                "lease_expires_at": {"$lt": _ts(moment)},
            },
            {"doc_id": 1, "fence": 1, "attempts": 1},
        )
        candidates = await expired.to_list()
        if not candidates:
            return ReclaimReport()
        mark = uuid.uuid4().hex
        ops = [
            (
                {
                    "_id": c["_id"],
                    "fence": c["fence"],
                    "state": D.RUNNING.value,
                    "lease_expires_at": {"$lt": _ts(moment)},
                },
                _reclaim_pipeline(c["attempts"] >= max_attempts, f"{mark}:{i}", moment),
            )
            for i, c in enumerate(candidates)
        ]
        current = await self._write_marked(ops, "reclaim_mark")
        return await self._report_reclaim(
            task_id, candidates, current, mark, max_attempts
        )

    async def _report_reclaim(
        self,
        task_id: str,
        candidates: list[Doc],
        current: dict[str, Doc] | None,
        mark: str,
        max_attempts: int,
    ) -> ReclaimReport:
        released: list[str] = []
        failed: list[str] = []
        for i, c in enumerate(candidates):
            if _won(current, c["_id"], "reclaim_mark", f"{mark}:{i}"):
                lost = failed if c["attempts"] >= max_attempts else released
                lost.append(c["doc_id"])
        if failed:
            await self._tasks.update_one(
                {"_id": task_id}, {"$inc": {"settled.failed": len(failed)}}
            )
        if released or failed:
            logger.warning(
                "expired leases reclaimed task_id=%s released=%d failed=%d",
                task_id,
                len(released),
                len(failed),
            )
        return ReclaimReport(released=tuple(released), failed=tuple(failed))

    @_driver_errors
    async def reset_failed(
        self,
        task_id: str,
        doc_ids: Iterable[str] | None = None,
        *,
        now: datetime | None = None,
    ) -> int:
        """Move failed documents (all, or those named) back to ``pending``.

        Their attempt count starts again at zero; fencing tokens keep growing.
        Returns how many were reset.
        """
        moment = _now(now)
        query: Doc = {"task_id": task_id, "state": D.FAILED.value}
        if doc_ids is not None:
            keys = [_doc_key(task_id, d) for d in doc_ids]
            if not keys:
                return 0
            query["_id"] = {"$in": keys}
        result = await self._documents.update_many(
            query,
            {
                "$set": {
                    "state": D.PENDING.value,
                    "attempts": 0,
                    "error": None,
                    "next_attempt_at": None,
                    "finished_at": None,
                    "updated_at": _ts(moment),
                }
            },
        )
        count = result.modified_count
        if count:
            # Each document changes state at most once in update_many, so the
            # modified count is exactly what leaves the failed counter.
            await self._tasks.update_one(
                {"_id": task_id}, {"$inc": {"settled.failed": -count}}
            )
            logger.info("failed documents reset task_id=%s count=%d", task_id, count)
        return count

    @_driver_errors
    async def cancel_open(self, task_id: str, *, now: datetime | None = None) -> int:
        """Cancel every pending or waiting document of a task; return how many.

        Running documents are left to their workers, which settle them as
        ``cancelled`` under their fence.
        """
        moment = _now(now)
        result = await self._documents.update_many(
            {"task_id": task_id, "state": {"$in": OPEN_STATES}},
            {
                "$set": {
                    "state": D.CANCELLED.value,
                    "next_attempt_at": None,
                    "finished_at": _ts(moment),
                    "updated_at": _ts(moment),
                }
            },
        )
        count = result.modified_count
        if count:
            await self._tasks.update_one(
                {"_id": task_id}, {"$inc": {"settled.cancelled": count}}
            )
            logger.info("open documents cancelled task_id=%s count=%d", task_id, count)
        return count

    async def iter_open(
        self, task_id: str, *, batch_size: int = DEFAULT_BATCH
    ) -> AsyncIterator[list[str]]:
        """Yield the ids of pending and waiting documents in batches, each once.

        Pending ones come in document order, then the waiting ones: keyset
        pages on ``seq`` over the (task_id, state, seq) index, each starting
        after the last, so finished documents are never read. A document that
        moves from pending to waiting during the walk can be yielded twice.
        """
        size = max(batch_size, 1)
        for state in (D.PENDING, D.RETRY_WAIT):
            after = -1
            while page := await self._open_page(task_id, state, after, size):
                yield [doc["doc_id"] for doc in page]
                after = page[-1]["seq"]

    @_driver_errors
    async def _open_page(
        self, task_id: str, state: DocumentState, after: int, size: int
    ) -> list[Doc]:
        cursor = (
            self._documents.find(
                {"task_id": task_id, "state": state.value, "seq": {"$gt": after}},
                {"doc_id": 1, "seq": 1},
            )
            .sort("seq", ASCENDING)
            .limit(size)
        )
        return await cursor.to_list()

    @_driver_errors
    async def due_retries(
        self, task_id: str, *, limit: int, now: datetime | None = None
    ) -> list[str]:
        """Return ids of waiting documents whose ``next_attempt_at`` has come.

        Earliest first, over the (task_id, state, next_attempt_at) index.
        """
        if limit <= 0:
            return []
        cursor = (
            self._documents.find(
                {
                    "task_id": task_id,
                    "state": D.RETRY_WAIT.value,
                    "next_attempt_at": {"$lte": _ts(_now(now))},
                },
                {"doc_id": 1},
            )
            .sort([("next_attempt_at", ASCENDING), ("seq", ASCENDING)])
            .limit(limit)
        )
        return [doc["doc_id"] async for doc in cursor]

    @_driver_errors
    async def next_retry_at(self, task_id: str) -> datetime | None:
        """Return the earliest ``next_attempt_at`` of the task's waiting documents."""
        doc = await self._documents.find_one(
            {"task_id": task_id, "state": D.RETRY_WAIT.value},
            {"next_attempt_at": 1},
            sort=[("next_attempt_at", ASCENDING)],
        )
        if doc is None:
            return None
        stored = doc.get("next_attempt_at")
        return None if stored is None else datetime.fromisoformat(stored)

    @_driver_errors
    async def page_documents(
        self,
        task_id: str,
        *,
        state: DocumentState | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[DocumentCheckpoint]:
        """Return checkpoints in document order after the ``seq`` ``after``."""
        if limit <= 0:
            return []
        query: Doc = {"task_id": task_id, "seq": {"$gt": after}}
        if state is not None:
            query["state"] = DocumentState(state).value
        cursor = self._documents.find(query).sort("seq", ASCENDING).limit(limit)
        return [_checkpoint_from(doc) async for doc in cursor]

    @_driver_errors
    async def get_document(self, task_id: str, doc_id: str) -> DocumentCheckpoint:
        """Return one document's checkpoint.

        Raises:
            DocumentNotFound: no such document in the task.
        """
        doc = await self._documents.find_one({"_id": _doc_key(task_id, doc_id)})
        if doc is None:
            raise DocumentNotFound(task_id, doc_id)
        return _checkpoint_from(doc)
