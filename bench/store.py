"""What one document's checkpoint costs in each store, as a task grows.

Run as ``python -m bench.store [--sizes 1000,10000,100000] [--runs 5]
[--json PATH] [--skip-mongo] [--synchronous full]``.

SQLite, in microseconds per document. A checkpoint here is what a worker does
for one no-op document: ``claim(limit=1)`` then ``settle`` of one ``completed``
outcome, each awaited through the store's async surface. For every task size
the task is created once into a template file (not timed) and a quarter of its
documents are claimed and completed first, so the table is neither empty nor
full. Each run then starts from a fresh copy of that template, checkpoints a few
documents untimed to warm the caches, and times a fixed number of documents.
Two designs are measured under the same file settings (WAL, the same
``synchronous`` value, one ``BEGIN IMMEDIATE`` transaction per operation, one
store thread): ours, :class:`store.sqlite.SQLiteStore`, and the one-JSON-blob
design it replaces, :class:`bench.blob.BlobStore`. The designs alternate run by
run and the median run is reported. The blob costs grow with the task, so it
times fewer documents at large sizes (the output says how many).

MongoDB, in command round trips and bytes sent per document. mongoeco is too
slow for its times to mean anything, so a :class:`pymongo.monitoring.
CommandListener` counts the commands the store sends: the plain path
(``claim(limit=1)`` and one outcome settled per document) and the batched path
(``claim(limit=100)`` and 100 outcomes settled in one call), amortised per
document. Handshakes, pings and session ends are not counted; bytes sent are
the BSON size of each command as the listener sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import bson
from pymongo import monitoring

from bench.blob import BlobStore
from store.base import Documents
from store.models import Claim, DocumentInput, NewTask, Outcome, SettleResult
from store.sqlite import SYNCHRONOUS_MODES, SQLiteStore
from store.states import DocumentState
from tests.support.mongoeco import MongoEcoServer

TASK_ID = "bench"
OWNER = "bench-worker"
LEASE_SECONDS = 3600.0
ADVANCE_BATCH = 1000
TARGET_GROWTH = 1.5  # ours at the largest size / ours at the smallest, at most
TARGET_BLOB_RATIO = 100.0  # blob / ours at 10k documents, at least
BLOB_RATIO_SIZE = 10_000
# The blob parses and rewrites every document state twice per checkpoint; this
# bounds the states it handles per run (timed documents x task size), so that a
# run stays near half a minute at 100k documents.
BLOB_STATES_PER_RUN = 2_000_000
BLOB_MIN_DOCS = 20

MONGO_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 60_000,
    "connectTimeoutMS": 60_000,
    "socketTimeoutMS": 120_000,
}
# Connection and monitoring traffic, not the store's work.
NOT_ROUND_TRIPS = frozenset(
    {
        "hello",
        "ismaster",
        "ping",
        "endsessions",
        "buildinfo",
        "saslstart",
        "saslcontinue",
        "getnonce",
        "authenticate",
    }
)
MONGO_MAX_DOCS = 500  # mongoeco slows down as a collection grows
MONGO_WARMUP = 5
TARGET_PLAIN = 3.0  # round trips per document, at most
TARGET_BATCHED = 0.1


class BenchStore(Protocol):
    """The part of a checkpoint store that the benches drive."""

    def start(self) -> Awaitable[None]: ...
    def stop(self) -> Awaitable[None]: ...
    def create_task(
        self, new: NewTask, documents: Documents, *, batch_size: int = ...
    ) -> Awaitable[object]: ...
    def claim(
        self, task_id: str, owner: str, *, limit: int = ..., lease_seconds: float
    ) -> Awaitable[list[Claim]]: ...
    def settle(
        self, task_id: str, outcomes: Sequence[Outcome]
    ) -> Awaitable[list[SettleResult]]: ...


DESIGNS = ("ours", "blob")


def open_design(design: str, path: Path, synchronous: str) -> BenchStore:
    """Return an unstarted store of ``design`` on the file ``path``."""
    if design == "ours":
        return SQLiteStore(path, synchronous=synchronous)
    return BlobStore(path, synchronous=synchronous)


class BenchFailure(Exception):
    """The bench could not measure what it was asked to."""


# The work that is measured


def documents(n: int) -> Iterator[DocumentInput]:
    """Yield ``n`` documents with short inline text."""
    for i in range(n):
        yield DocumentInput(doc_id=f"doc-{i:07d}", text=f"document number {i}")


def completed(claim: Claim) -> Outcome:
    """Return the outcome of a no-op attempt that succeeded."""
    return Outcome(
        doc_id=claim.doc_id, fence=claim.fence, state=DocumentState.COMPLETED
    )


async def claim_and_settle(store: BenchStore, limit: int) -> int:
    """Claim up to ``limit`` documents, complete them in one call; return how many.

    Raises:
        BenchFailure: the store refused an outcome of its own claim.
    """
    claims = await store.claim(TASK_ID, OWNER, limit=limit, lease_seconds=LEASE_SECONDS)
    if not claims:
        return 0
    results = await store.settle(TASK_ID, [completed(c) for c in claims])
    if any(r != "accepted" for r in results):
        raise BenchFailure(f"settle refused a fresh claim: {results!r}")
    return len(claims)


async def checkpoint(store: BenchStore, count: int) -> None:
    """Checkpoint ``count`` documents one at a time, as a worker does.

    Raises:
        BenchFailure: the task ran out of documents.
    """
    for _ in range(count):
        if not await claim_and_settle(store, 1):
            raise BenchFailure(f"task {TASK_ID!r} ran out of pending documents")


async def advance(store: BenchStore, count: int, batch: int) -> None:
    """Claim and complete ``count`` documents in batches of ``batch`` (untimed)."""
    done = 0
    while done < count:
        got = await claim_and_settle(store, min(batch, count - done))
        if not got:
            raise BenchFailure(f"task {TASK_ID!r} ran out after {done} documents")
        done += got


# SQLite: per-run setup and timing


@dataclass
class Series:
    """The runs of one design at one task size."""

    design: str
    size: int
    docs_timed: int
    warmup: int
    runs_us: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        """The median run, microseconds per document."""
        return statistics.median(self.runs_us)


def docs_for(design: str, size: int, docs: int) -> int:
    """Return how many documents a run of ``design`` times at ``size``."""
    if design == "ours":
        return docs
    return min(docs, max(BLOB_MIN_DOCS, BLOB_STATES_PER_RUN // size))


def fsync_file(path: Path) -> None:
    """Flush a file to disk so that no later sync pays for writing it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_db(path: Path) -> None:
    """Delete a SQLite file and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def make_template(
    design: str, path: Path, size: int, start: int, synchronous: str
) -> None:
    """Create the task with ``size`` documents and complete ``start`` of them."""
    store = open_design(design, path, synchronous)
    await store.start()
    try:
        new = NewTask(tenant="bench", type="noop", task_id=TASK_ID)
        await store.create_task(new, documents(size))
        await advance(store, start, ADVANCE_BATCH if design == "ours" else start)
    finally:
        await store.stop()
    seal_template(path)


def seal_template(path: Path) -> None:
    """Check that a closed template is one self-contained file, and flush it."""
    if Path(f"{path}-wal").exists():
        raise BenchFailure(f"{path} kept its WAL after closing; copies would differ")
    fsync_file(path)


async def time_run(design: str, template: Path, series: Series, sync: str) -> float:
    """Checkpoint ``series.docs_timed`` documents on a fresh copy; return us/doc."""
    path = template.with_name(f"run-{design}.db")
    remove_db(path)
    shutil.copyfile(template, path)
    # Without this, the copy's dirty pages would be written by the first WAL
    # checkpoint inside the timed loop, and charged to the larger tasks.
    fsync_file(path)
    store = open_design(design, path, sync)
    await store.start()
    try:
        await checkpoint(store, series.warmup)
        began = time.perf_counter()
        await checkpoint(store, series.docs_timed)
        elapsed = time.perf_counter() - began
    finally:
        await store.stop()
        remove_db(path)
    return elapsed / series.docs_timed * 1e6


def plan_size(size: int, docs: int) -> tuple[int, dict[str, Series]]:
    """Return the untimed head start and the empty series of both designs.

    Raises:
        BenchFailure: the task is too small for the documents to time.
    """
    start = size // 4
    plan = {}
    for design in DESIGNS:
        timed = docs_for(design, size, docs)
        warmup = min(10, max(1, timed // 10))
        if start + warmup + timed > size:
            raise BenchFailure(
                f"a task of {size} documents is too small to time {timed} after "
                f"{start + warmup} untimed ones; lower --docs or raise --sizes"
            )
        plan[design] = Series(design, size, timed, warmup)
    return start, plan


async def bench_size(
    size: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Series]:
    """Measure both designs at one task size, alternating them run by run."""
    start, plan = plan_size(size, args.docs)
    folder = workdir / f"size-{size}"
    templates = {d: folder / f"template-{d}.db" for d in DESIGNS}
    for design, path in templates.items():
        await make_template(design, path, size, start, args.synchronous)
    order = list(DESIGNS)
    for run in range(args.runs):
        for design in order if run % 2 == 0 else order[::-1]:
            series = plan[design]
            us = await time_run(design, templates[design], series, args.synchronous)
            series.runs_us.append(us)
            progress(f"size {size:>7,} run {run + 1} {design:<4} {us:12,.0f} us/doc")
    shutil.rmtree(folder)
    return plan


def progress(line: str) -> None:
    """Report progress on stderr, so that stdout holds only the results."""
    print(line, file=sys.stderr, flush=True)


def sqlite_ratios(results: dict[int, dict[str, Series]]) -> dict[str, Any]:
    """Return the two headline ratios and whether each meets its target."""
    sizes = sorted(results)
    small, large = sizes[0], sizes[-1]
    growth = results[large]["ours"].median_us / results[small]["ours"].median_us
    best = min(results[large]["ours"].runs_us) / min(results[small]["ours"].runs_us)
    ratios: dict[str, Any] = {
        "ours_growth": {
            "from_size": small,
            "to_size": large,
            "ratio": growth,
            "ratio_of_best_runs": best,
            "target_at_most": TARGET_GROWTH,
            "met": growth <= TARGET_GROWTH,
        }
    }
    if BLOB_RATIO_SIZE in results:
        at = results[BLOB_RATIO_SIZE]
        blob = at["blob"].median_us / at["ours"].median_us
        ratios["blob_over_ours"] = {
            "size": BLOB_RATIO_SIZE,
            "ratio": blob,
            "target_at_least": TARGET_BLOB_RATIO,
            "met": blob >= TARGET_BLOB_RATIO,
        }
    return ratios


async def sqlite_bench(args: argparse.Namespace) -> dict[int, dict[str, Series]]:
    """Run the SQLite bench at every size in a temporary folder."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="taskpoint-bench-") as tmp:
        for size in args.sizes:
            results[size] = await bench_size(size, args, Path(tmp))
    return results


# MongoDB: round trips and bytes


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends, and their BSON size."""

    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()
        self.bytes_by_name: Counter[str] = Counter()
        self.failures = 0

    @property
    def round_trips(self) -> int:
        """Commands sent since the last reset."""
        return sum(self.by_name.values())

    @property
    def bytes_sent(self) -> int:
        """BSON bytes of the commands sent since the last reset."""
        return sum(self.bytes_by_name.values())

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.by_name.clear()
        self.bytes_by_name.clear()
        self.failures = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name.lower() in NOT_ROUND_TRIPS:
            return
        self.by_name[event.command_name] += 1
        self.bytes_by_name[event.command_name] += len(bson.encode(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name.lower() not in NOT_ROUND_TRIPS:
            self.failures += 1


@dataclass
class PathCost:
    """The commands one path of the MongoDB store sends, per document."""

    path: str
    documents: int
    round_trips: int
    bytes_sent: int
    commands: dict[str, int]
    command_bytes: dict[str, int]
    target_round_trips: float

    @property
    def round_trips_per_doc(self) -> float:
        return self.round_trips / self.documents

    @property
    def bytes_per_doc(self) -> float:
        return self.bytes_sent / self.documents

    @property
    def met(self) -> bool:
        return self.round_trips_per_doc <= self.target_round_trips


async def measure_path(
    store: BenchStore,
    counter: CommandCounter,
    name: str,
    batch: int,
    batches: int,
    target: float,
) -> PathCost:
    """Count the commands of ``batches`` claims of ``batch`` documents, settled."""
    counter.reset()
    done = 0
    for _ in range(batches):
        got = await claim_and_settle(store, batch)
        if got != batch:
            raise BenchFailure(f"{name}: claimed {got} documents, expected {batch}")
        done += got
    if counter.failures:
        raise BenchFailure(f"{name}: {counter.failures} commands failed")
    return PathCost(
        name,
        done,
        counter.round_trips,
        counter.bytes_sent,
        dict(counter.by_name),
        dict(counter.bytes_by_name),
        target,
    )


def mongo_store_class() -> Callable[..., BenchStore]:
    """Return ``store.mongo.MongoStore``.

    Raises:
        BenchFailure: store/mongo.py is missing or does not import.
    """
    try:
        from store.mongo import MongoStore
    except Exception as err:
        raise BenchFailure(f"store/mongo.py is not usable: {err!r}") from err
    return MongoStore


async def mongo_paths(
    mongo_store: Callable[..., BenchStore], url: str, args: argparse.Namespace
) -> list[PathCost]:
    """Open a MongoStore on ``url`` and count both checkpoint paths."""
    counter = CommandCounter()
    options = {"event_listeners": [counter], **MONGO_OPTIONS}
    database = f"bench_{uuid.uuid4().hex[:12]}"
    store = mongo_store(url, database, client_options=options)
    await store.start()
    try:
        new = NewTask(tenant="bench", type="noop", task_id=TASK_ID)
        await store.create_task(new, documents(mongo_task_size(args)))
        await checkpoint(store, MONGO_WARMUP)
        plain = await measure_path(
            store, counter, "plain", 1, args.mongo_plain, TARGET_PLAIN
        )
        batched = await measure_path(
            store,
            counter,
            "batched",
            args.mongo_batch,
            args.mongo_batches,
            TARGET_BATCHED,
        )
    finally:
        await store.stop()
    return [plain, batched]


def mongo_task_size(args: argparse.Namespace) -> int:
    """Return the documents of the MongoDB task: warm-up, plain and batched."""
    plain, batch, batches = args.mongo_plain, args.mongo_batch, args.mongo_batches
    return MONGO_WARMUP + int(plain) + int(batch) * int(batches)


def drain(server: MongoEcoServer, tail: deque[str]) -> None:
    """Keep reading the server's output so that a full pipe never stalls it."""
    stream = server.process.stdout if server.process else None
    if stream is None:
        return
    try:
        for line in stream:
            tail.append(line.rstrip())
    except (OSError, ValueError):
        return  # closed by MongoEcoServer.stop while we read


def mongo_bench(args: argparse.Namespace) -> list[PathCost]:
    """Start a mongoeco server, count both paths, stop the server whatever happens.

    Raises:
        BenchFailure: the server, the store or a measurement failed.
    """
    mongo_store = mongo_store_class()
    server = MongoEcoServer()
    tail: deque[str] = deque(maxlen=20)
    try:
        server.start()
        threading.Thread(target=drain, args=(server, tail), daemon=True).start()
        progress(f"mongoeco listening at {server.url}")
        return asyncio.run(mongo_paths(mongo_store, server.url, args))
    except BenchFailure:
        raise
    except Exception as err:
        output = "".join(f"\n  {line}" for line in tail)
        detail = f"; the server's last output:{output}" if output else ""
        raise BenchFailure(f"{err!r}{detail}") from err
    finally:
        server.stop()


# Output


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return what the figures depend on, to print beside them."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python -m bench.store", *sys.argv[1:]]),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "journal_mode": "wal",
        "synchronous": args.synchronous,
        "runs": args.runs,
        "sizes": args.sizes,
    }


def print_sqlite(
    results: dict[int, dict[str, Series]], args: argparse.Namespace
) -> None:
    """Print the SQLite table and its ratios."""
    print(
        "\nSQLite: one checkpoint = claim(limit=1) + settle 1 completed outcome,"
        " no-op work\n"
        f"durability, both designs: journal_mode=WAL synchronous={args.synchronous},"
        " BEGIN IMMEDIATE, one transaction per operation\n"
        f"each run starts from a copy with 1/4 of the task completed; median of"
        f" {args.runs} runs, designs alternating\n"
    )
    print(
        f"{'documents':>10}  {'design':<6} {'timed':>6} {'median us/doc':>14}"
        f" {'min':>12} {'max':>12} {'blob/ours':>10}"
    )
    for size in sorted(results):
        ours = results[size]["ours"].median_us
        for design, series in results[size].items():
            ratio = f"{series.median_us / ours:10.1f}" if design == "blob" else ""
            print(
                f"{size:>10,}  {design:<6} {series.docs_timed:>6}"
                f" {series.median_us:>14,.0f} {min(series.runs_us):>12,.0f}"
                f" {max(series.runs_us):>12,.0f} {ratio}"
            )
    capped = [
        s for r in results.values() for s in r.values() if s.docs_timed < args.docs
    ]
    for series in capped:
        print(
            f"note: the blob times {series.docs_timed} documents per run at "
            f"{series.size:,} documents (about {series.median_us / 1e6:.2f} s each),"
            f" not {args.docs}"
        )
    print_ratios(sqlite_ratios(results))


def print_ratios(ratios: dict[str, Any]) -> None:
    """Print the headline ratios against their targets."""
    growth = ratios["ours_growth"]
    print(
        f"\nours at {growth['to_size']:,} / ours at {growth['from_size']:,}:"
        f" {growth['ratio']:.2f} (target <= {growth['target_at_most']}:"
        f" {'met' if growth['met'] else 'MISSED'});"
        f" best run / best run: {growth['ratio_of_best_runs']:.2f}"
    )
    blob = ratios.get("blob_over_ours")
    if blob:
        print(
            f"blob / ours at {blob['size']:,}: {blob['ratio']:.0f}"
            f" (target >= {blob['target_at_least']:.0f}:"
            f" {'met' if blob['met'] else 'MISSED'})"
        )


def print_mongo(paths: list[PathCost], args: argparse.Namespace) -> None:
    """Print the MongoDB round trips and bytes per document."""
    size = mongo_task_size(args)
    print(
        f"\nMongoDB (mongoeco, a task of {size} no-op documents): commands sent per"
        " document,\nhandshakes, pings and lease extensions not counted\n"
    )
    print(
        f"{'path':<8} {'docs':>5} {'round trips/doc':>16} {'target':>7}"
        f" {'bytes sent/doc':>15}  commands"
    )
    for p in paths:
        commands = ", ".join(
            f"{name} {n} x {p.command_bytes[name] / n:,.0f} B"
            for name, n in sorted(p.commands.items())
        )
        verdict = "met" if p.met else "MISSED"
        print(
            f"{p.path:<8} {p.documents:>5} {p.round_trips_per_doc:>16.3f}"
            f" {'<= ' + str(p.target_round_trips):>7} {p.bytes_per_doc:>15,.0f}"
            f"  {commands} ({verdict})"
        )
    print(
        "plain: claim(limit=1) + settle 1 outcome per document; batched:"
        f" claim(limit={args.mongo_batch}) + settle {args.mongo_batch}"
        " outcomes in one call"
    )


def figures(
    args: argparse.Namespace,
    sqlite: dict[int, dict[str, Series]] | None,
    mongo: list[PathCost] | str | None,
) -> dict[str, Any]:
    """Return every figure as JSON-ready data."""
    out: dict[str, Any] = {"settings": settings(args)}
    if sqlite is not None:
        out["sqlite"] = [
            {**asdict(s), "median_us": s.median_us}
            for r in sqlite.values()
            for s in r.values()
        ]
        out["sqlite_ratios"] = sqlite_ratios(sqlite)
    if isinstance(mongo, str):
        out["mongo"] = {"error": mongo}
    elif mongo is not None:
        out["mongo"] = [
            {
                **asdict(p),
                "round_trips_per_doc": p.round_trips_per_doc,
                "bytes_per_doc": p.bytes_per_doc,
                "met": p.met,
            }
            for p in mongo
        ]
    return out


# Entry point


def sizes(text: str) -> list[int]:
    """Parse ``1000,10000`` into sorted task sizes."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad --sizes {text!r}: {err}") from err
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"bad --sizes {text!r}: need sizes >= 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.store", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--sizes", type=sizes, default=[1_000, 10_000, 100_000], help="task sizes")
    add("--runs", type=int, default=5, help="runs per design and size (at least 1)")
    add("--docs", type=int, default=500, help="documents timed per run")
    add("--synchronous", choices=SYNCHRONOUS_MODES, default="full")
    add("--json", type=Path, metavar="PATH", help="also write the figures here")
    add("--skip-mongo", action="store_true", help="measure SQLite only")
    add("--skip-sqlite", action="store_true", help="measure MongoDB only")
    add("--mongo-plain", type=int, default=50, help="documents on the plain path")
    add("--mongo-batch", type=int, default=100, help="claim limit on the batched path")
    add("--mongo-batches", type=int, default=2, help="batches on the batched path")
    args = parser.parse_args(argv)
    mongo_docs = mongo_task_size(args)
    if args.runs < 1 or args.docs < 1:
        parser.error("--runs and --docs must be at least 1")
    if not args.skip_mongo and mongo_docs > MONGO_MAX_DOCS:
        parser.error(
            f"the MongoDB task would hold {mongo_docs} documents; mongoeco"
            f" needs at most {MONGO_MAX_DOCS}"
        )
    return args


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that cleanup (the server) still runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_mongo(args: argparse.Namespace) -> list[PathCost] | str:
    """Run the MongoDB bench; return its figures or why it failed."""
    try:
        paths = mongo_bench(args)
    except BenchFailure as err:
        print(f"\nMongoDB bench FAILED: {err}", file=sys.stderr)
        return str(err)
    print_mongo(paths, args)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the benches; 0 when every part ran, 1 when one failed."""
    args = parse_args(argv)
    stop_on_sigterm()
    info = settings(args)
    print(" ".join(f"{k}={v}" for k, v in info.items() if k != "command"))
    sqlite = None
    if not args.skip_sqlite:
        sqlite = asyncio.run(sqlite_bench(args))
        print_sqlite(sqlite, args)
    mongo = None if args.skip_mongo else run_mongo(args)
    if args.json is not None:
        args.json.write_text(json.dumps(figures(args, sqlite, mongo), indent=2) + "\n")
    return 1 if isinstance(mongo, str) else 0


if __name__ == "__main__":
    sys.exit(main())
