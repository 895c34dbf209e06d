"""Batching of document streams, so that no store holds a whole task in memory."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")


async def batched(
    items: Iterable[T] | AsyncIterable[T], size: int
) -> AsyncIterator[list[T]]:
    """Yield lists of at most ``size`` items from a sync or async iterable.

    Raises:
        ValueError: ``size`` is below 1.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size!r}")
    batch: list[T] = []
    if isinstance(items, AsyncIterable):
        async for item in items:
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
    else:
        for item in items:
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch
