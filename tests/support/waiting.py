"""Waiting for a condition with a deadline, instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

R = TypeVar("R")


async def eventually(
    probe: Callable[[], Awaitable[R]], *, within: float = 15.0, every: float = 0.02
) -> R:
    """Return the first truthy result of ``probe``, polling until ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s: {probe}")
        await asyncio.sleep(every)
