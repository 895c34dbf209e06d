"""How well the LLM client keeps a rate-limited provider busy.

Run as ``python -m bench.llm [--documents N] [--limit L] [--workers W]``.

A fake OpenAI-compatible provider (``tests.support.fake_llm``) answers every
chat call in 200 ms and returns 429 to any call that arrives while ``limit``
calls are already in flight. The provider limit in the client is set to the
same ``limit``. A ``raptor`` task of N documents (about 6,000 characters each:
11 chunks, three group summaries and a root, so four calls per document)
runs through one real :class:`actors.supervisor.Supervisor` with ``W``
document workers, on the in-process broker and a SQLite store.

The figure is the time-weighted number of calls in flight measured at the
fake, from its first call's arrival to its last call's departure; the target
is at least 90% of the limit. The run also checks that every document
completed and that the task's token count equals what the fake reported.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from actors.broker_memory import MemoryBroker
from actors.llm import OpenAIBackend
from actors.processors.raptor import RaptorProcessor
from actors.supervisor import Supervisor, SupervisorConfig
from store.models import DocumentInput, NewTask, Task, TaskConfig, TaskCounts
from store.sqlite import SQLiteStore
from store.states import is_final
from tests.support.fake_llm import FakeLLM, usage_for


def document(i: int) -> str:
    """About 6,000 characters of prose, distinct per document."""
    paragraphs = []
    for p in range(12):
        sentences = [
            f"Report {i} section {p} line {s} describes Project{p} and its results."
            for s in range(8)
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


async def run(documents: int, limit: int, workers: int) -> int:
    """Run the bench; return the exit status (1 when an invariant broke)."""
    async with FakeLLM(latency=0.2, throttle_above=limit, retry_after="1") as fake:
        backend = OpenAIBackend(fake.url, None, "fake", concurrency=limit, timeout=30)
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "bench.db", synchronous="normal")
            broker = MemoryBroker()
            await store.start()
            await broker.start()
            config = SupervisorConfig(concurrency=workers, sweep_interval=0.2)
            processor = RaptorProcessor(llm=backend)
            supervisor = Supervisor(
                store, broker, config, processors=lambda _: processor
            )
            await supervisor.start()
            try:
                task_id, seconds = await _one_task(store, documents)
                task = await store.get_task(task_id)
                counts = await store.counts(task_id)
            finally:
                await supervisor.stop(timeout=30)
                await broker.stop()
                await store.stop()
                await backend.stop()
    return _report(fake, task, counts, seconds, limit, documents)


async def _one_task(store: SQLiteStore, documents: int) -> tuple[str, float]:
    inputs = [
        DocumentInput(doc_id=f"d{i:05d}", text=document(i)) for i in range(documents)
    ]
    new = NewTask(tenant="bench", type="raptor", config=TaskConfig())
    started = time.monotonic()
    task = await store.create_task(new, inputs)
    while True:
        current = await store.get_task(task.task_id)
        if is_final(current.state):
            return task.task_id, time.monotonic() - started
        print(
            f"  {(await store.counts(task.task_id)).completed} completed",
            file=sys.stderr,
            end="\r",
        )
        await asyncio.sleep(0.5)


def _report(
    fake: FakeLLM,
    task: Task,
    counts: TaskCounts,
    seconds: float,
    limit: int,
    documents: int,
) -> int:
    mean = fake.mean_in_flight()
    statuses = fake.statuses()
    prompt = completion = 0
    for call in fake.calls:
        if call.status == 200:
            usage = usage_for(call.messages, call.reply)
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
    exact = (task.tokens.prompt, task.tokens.completion) == (prompt, completion)
    print(f"documents           {documents} ({counts.completed} completed)")
    print(f"task time           {seconds:.1f} s, state {task.state}")
    print(f"calls               {len(statuses)} ({statuses.count(429)} answered 429)")
    print(f"most in flight      {fake.most_in_flight}")
    verdict = "ok" if mean >= 0.9 * limit else "MISSED"
    print(f"mean in flight      {mean:.2f} of {limit} ({mean / limit:.1%}) {verdict}")
    print(
        f"tokens              {task.tokens.prompt}+{task.tokens.completion}, ", end=""
    )
    print("exact" if exact else f"FAILED: the fake reported {prompt}+{completion}")
    return 0 if exact and counts.completed == documents else 1


def main() -> None:
    """Parse the options and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--workers", type=int, default=64)
    options = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    sys.exit(asyncio.run(run(options.documents, options.limit, options.workers)))


if __name__ == "__main__":
    main()
