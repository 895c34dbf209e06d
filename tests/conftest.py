"""Fixtures shared by the whole suite: real stores on real servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from store.base import CheckpointStore
from store.sqlite import SQLiteStore
from tests.support.mongoeco import MongoEcoServer

StoreFactory = Callable[[], Awaitable[Any]]

# mongoeco is slow and single-threaded: a long operation must not trip the
# driver's heartbeat and cancel everything else in flight.
MONGO_TEST_OPTIONS = {
    "serverSelectionTimeoutMS": 60_000,
    "connectTimeoutMS": 60_000,
    "socketTimeoutMS": 120_000,
}


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of the RabbitMQ that the test command started or found."""
    return os.environ.get(
        "TASKPOINT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
    )


@pytest.fixture
def broker_prefix() -> str:
    """A queue and exchange prefix of the test's own on the shared RabbitMQ."""
    return f"tp-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """The URL of a MongoDB-protocol server, started here unless one is given."""
    given = os.environ.get("TASKPOINT_TEST_MONGODB_URL")
    if given:
        yield given
        return
    server = MongoEcoServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def _open_mongo(url: str, database: str) -> CheckpointStore:
    from store.mongo import MongoStore

    store = MongoStore(url, database, client_options=dict(MONGO_TEST_OPTIONS))
    await store.start()
    return store


@pytest.fixture(params=["sqlite", "mongodb"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Open stores that share one backing: a file, or a database of its own.

    Each call opens another store (its own connection) on the same data, so
    tests can race independent clients as separate processes would.
    """
    opened: list[Any] = []
    if request.param == "sqlite":
        path = tmp_path / "checkpoints.db"

        async def open_store() -> Any:
            store = SQLiteStore(path, synchronous="normal")
            await store.start()
            opened.append(store)
            return store
    else:
        url = request.getfixturevalue("mongo_url")
        database = f"t_{uuid.uuid4().hex[:12]}"

        async def open_store() -> Any:
            store = await _open_mongo(url, database)
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        await store.stop()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Any:
    """A started store of each kind."""
    return await store_factory()
