"""Counters stay exact under random interleavings of every store operation.

Hypothesis draws a program of rounds; each round runs a few operations at once
from independent clients of one store (separate connections), racing as
separate workers would. After the program the task's counters and token totals
must equal the aggregate over its documents, and a recount must agree.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.models import (
    Claim,
    DocumentError,
    DocumentInput,
    NewTask,
    Outcome,
    TaskConfig,
    TokenUsage,
    utcnow,
)
from store.sqlite import SQLiteStore
from tests.conftest import MONGO_TEST_OPTIONS
from tests.store.invariants import assert_counts_exact

DOCS = 12
CLIENTS = 3
OUTCOMES = ["completed", "failed", "retry_wait", "cancelled", "pending"]

operation = st.one_of(
    st.tuples(st.just("claim"), st.integers(1, 5)),
    st.tuples(st.just("settle"), st.sampled_from(OUTCOMES), st.integers(0, 40)),
    st.tuples(st.just("stale"), st.sampled_from(OUTCOMES)),
    st.tuples(st.just("reclaim"), st.integers(0, 120)),
    st.tuples(st.just("reset"), st.booleans()),
    st.tuples(
        st.just("extend"),
    ),
)
program = st.lists(st.lists(operation, min_size=1, max_size=CLIENTS), max_size=14)


class Scenario:
    """Runs one drawn program against a store and keeps what workers hold."""

    def __init__(self, clients: list, task_id: str) -> None:
        self.clients = clients
        self.task_id = task_id
        self.held: list[Claim] = []
        self.spent: list[Claim] = []
        self.clock = utcnow()

    async def run(self, rounds: list[list[tuple]]) -> None:
        for ops in rounds:
            await asyncio.gather(
                *(
                    self.apply(self.clients[i % len(self.clients)], op)
                    for i, op in enumerate(ops)
                )
            )

    async def apply(self, store, op: tuple) -> None:
        kind = op[0]
        if kind == "claim":
            got = await store.claim(
                self.task_id, "w", limit=op[1], lease_seconds=60, now=self.clock
            )
            self.held.extend(got)
        elif kind == "settle" and self.held:
            claim = self.held.pop(op[2] % len(self.held))
            self.spent.append(claim)
            await store.settle(self.task_id, [self.outcome(claim, op[1], op[2])])
        elif kind == "stale" and self.spent:
            await store.settle(self.task_id, [self.outcome(self.spent[0], op[1], 7)])
        elif kind == "reclaim":
            self.clock += timedelta(seconds=op[1])
            report = await store.reclaim_expired(
                self.task_id, max_attempts=2, now=self.clock
            )
            lost = set(report.released) | set(report.failed)
            self.spent.extend(c for c in self.held if c.doc_id in lost)
            self.held = [c for c in self.held if c.doc_id not in lost]
        elif kind == "reset":
            names = ["d1", "d2", "d3"] if op[1] else None
            await store.reset_failed(self.task_id, names)
        elif kind == "extend" and self.held:
            leases = [(c.doc_id, c.fence) for c in self.held]
            await store.extend_leases(
                self.task_id, leases, lease_seconds=60, now=self.clock
            )

    def outcome(self, claim: Claim, state: str, salt: int) -> Outcome:
        error = None if state == "completed" else DocumentError(type="E", message="e")
        return Outcome(
            doc_id=claim.doc_id,
            fence=claim.fence,
            state=state,
            tokens=TokenUsage(prompt=salt, completion=salt % 7),
            error=error,
            next_attempt_at=self.clock + timedelta(seconds=salt)
            if state == "retry_wait"
            else None,
        )


async def run_program(open_store, rounds: list[list[tuple]]) -> None:
    clients = [await open_store() for _ in range(CLIENTS)]
    try:
        task = await clients[0].create_task(
            NewTask(tenant="t", type="noop", config=TaskConfig(max_attempts=2)),
            [DocumentInput(doc_id=f"d{i}", text="x") for i in range(DOCS)],
        )
        await Scenario(clients, task.task_id).run(rounds)
        await assert_counts_exact(clients[0], task.task_id)
        before = await clients[0].counts(task.task_id)
        assert await clients[1].recount(task.task_id) == before
    finally:
        for client in clients:
            await client.stop()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rounds=program)
def test_sqlite_counters_exact_after_random_interleavings(tmp_path: Path, rounds):
    path = tmp_path / f"{uuid.uuid4().hex}.db"

    async def open_store():
        store = SQLiteStore(path, synchronous="normal")
        await store.start()
        return store

    asyncio.run(run_program(open_store, rounds))


@pytest.fixture(scope="module")
def mongo_database(mongo_url: str) -> tuple[str, str]:
    return mongo_url, f"t_{uuid.uuid4().hex[:12]}"


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rounds=program)
def test_mongodb_counters_exact_after_random_interleavings(mongo_database, rounds):
    from store.mongo import MongoStore

    url, database = mongo_database

    async def open_store():
        store = MongoStore(url, database, client_options=dict(MONGO_TEST_OPTIONS))
        await store.start()
        return store

    asyncio.run(run_program(open_store, rounds))
