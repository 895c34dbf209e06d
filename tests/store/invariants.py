"""Checks of the store invariants, shared by the store and actor tests."""

from __future__ import annotations

from collections import Counter

from store.base import CheckpointStore
from store.models import TokenUsage


async def all_documents(store: CheckpointStore, task_id: str) -> list:
    docs, after = [], -1
    while page := await store.page_documents(task_id, after=after, limit=500):
        docs.extend(page)
        after = page[-1].seq
    return docs


async def assert_counts_exact(store: CheckpointStore, task_id: str) -> None:
    """Assert the task's counts and token totals equal those of its documents."""
    docs = await all_documents(store, task_id)
    by_state = Counter(str(d.state) for d in docs)
    counts = await store.counts(task_id)
    task = await store.get_task(task_id)
    expected = {
        "total": len(docs),
        **{
            s: by_state.get(s, 0)
            for s in (
                "pending",
                "running",
                "retry_wait",
                "completed",
                "failed",
                "cancelled",
            )
        },
    }
    assert counts.model_dump() == expected
    tokens = sum((d.tokens for d in docs), TokenUsage())
    assert task.tokens == tokens
    per_attempt = sum((a.tokens for d in docs for a in d.attempt_log), TokenUsage())
    assert per_attempt == tokens
