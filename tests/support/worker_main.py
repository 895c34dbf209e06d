"""A worker process for fault tests: ``taskpoint worker`` with a test processor.

Run as ``python -m tests.support.worker_main``; it reads the same
``TASKPOINT_*`` settings as ``taskpoint worker`` and runs the same
``run_worker``. The processor (user code, not taskpoint's) is described by
``TEST_PROCESSOR`` as JSON: ``{"delay": s, "kill": [doc ids that SIGKILL
the process], "permanent": [...], "tokens": [p, c]}``; tasks of type ``noop``
get the real noop processor.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from actors.processors import PermanentError, ProcessorContext, load_processor
from gateway.logs import configure_logging
from gateway.runtime import run_worker
from gateway.settings import Settings


class FaultProcessor:
    name = "fault"

    def __init__(self, spec: dict[str, Any]) -> None:
        self.delay = float(spec.get("delay", 0.0))
        self.kill = set(spec.get("kill", ()))
        self.permanent = set(spec.get("permanent", ()))
        self.tokens = tuple(spec.get("tokens", (1, 1)))

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        ctx.tokens.add(*self.tokens)
        if ctx.doc_id in self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay:
            await asyncio.sleep(self.delay)
        if ctx.doc_id in self.permanent:
            raise PermanentError(f"{ctx.doc_id!r} cannot be read")
        return {"doc": ctx.doc_id, "by": os.getpid()}


class MergingFaultProcessor(FaultProcessor):
    name = "fault-merge"

    def merge(self, base: dict[str, Any] | None, results: list[dict[str, Any]]):
        docs = set((base or {}).get("docs", [])) | {r["doc"] for r in results}
        return {"docs": sorted(docs)}


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    spec = json.loads(os.environ.get("TEST_PROCESSOR", "{}"))
    ours = {"fault": FaultProcessor(spec), "fault-merge": MergingFaultProcessor(spec)}

    def lookup(name: str):
        return ours[name] if name in ours else load_processor(name)

    asyncio.run(run_worker(settings, processors=lookup))


if __name__ == "__main__":
    sys.exit(main())
