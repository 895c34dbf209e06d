"""The ``noop`` processor: does nothing, for benchmarks and tests of the engine."""

from __future__ import annotations

from typing import Any

from actors.processors.base import ProcessorContext


class NoopProcessor:
    """Completes every document at once, with no result and no tokens."""

    name = "noop"

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Return at once."""
        return None
