"""The gateway's checkpoint-status: throughput against a baseline, and scale.

Run: ``.venv/bin/python -m bench.gateway [--requests N] [--concurrency C]``.

1. Requests per second of ``GET .../checkpoint-status`` against a baseline
   aiohttp handler served from the same store in the same run: the same
   token check (hash, one indexed read) and one indexed read of the task row,
   answered as JSON. Target: ratio >= 0.7.
2. p99 latency of checkpoint-status on a task of 100,000 documents against
   one of 1,000. Target: <= 1.2x (it reads counters, never documents).

Both servers run on loopback in this process (SQLite store, in-process
broker: the status path never touches the broker); the client is aiohttp
with C requests in flight. Every answer is checked against the store: before
each round a document is checkpointed, and the answers must show it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from actors.broker_memory import MemoryBroker
from gateway.api import ApiError
from gateway.app import make_app
from gateway.auth import Authenticator
from gateway.settings import Settings
from gateway.tokens import hash_token, new_token
from store.models import DocumentInput, NewTask, Outcome
from store.sqlite import SQLiteStore
from store.states import DocumentState


def baseline_app(store: SQLiteStore) -> web.Application:
    # The same token check as the gateway's (its Authenticator), then one
    # indexed read of the task row.
    auth = Authenticator(store)

    async def handler(request: web.Request) -> web.Response:
        try:
            tenant = await auth.tenant(request)
        except ApiError:
            return web.json_response({"error": "unauthorized"}, status=401)
        task = await store.get_task(request.match_info["task_id"], tenant)
        return web.Response(
            text=task.model_dump_json(), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/task/{task_id}", handler)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def load(http, url, headers, n, concurrency, expect) -> tuple[float, list[float]]:
    """Send ``n`` requests, ``concurrency`` at a time; return rps and latencies."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def one_client() -> None:
        for _ in queue:
            started = time.perf_counter()
            async with http.get(url, headers=headers) as response:
                body = await response.json()
            latencies.append(time.perf_counter() - started)
            assert response.status == 200, body
            expect(body)

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), latencies


async def make_task(store: SQLiteStore, n: int) -> str:
    docs = (DocumentInput(doc_id=f"d{i:07d}", text="x") for i in range(n))
    task = await store.create_task(NewTask(tenant="bench", type="noop"), docs)
    return task.task_id


async def checkpoint_one(store: SQLiteStore, task_id: str) -> int:
    """Complete one more document durably; return the completed count."""
    (claim,) = await store.claim(task_id, "bench", limit=1, lease_seconds=60)
    outcome = Outcome(
        doc_id=claim.doc_id, fence=claim.fence, state=DocumentState.COMPLETED
    )
    await store.settle(task_id, [outcome])
    return (await store.counts(task_id)).completed


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def main(requests: int, concurrency: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db", synchronous="normal")
        await store.start()
        broker = MemoryBroker()
        await broker.start()
        token = new_token()
        await store.put_token(hash_token(token), "bench")
        small = await make_task(store, 1_000)
        print("creating a task of 100,000 documents ...", flush=True)
        large = await make_task(store, 100_000)
        ours, our_url = await serve(make_app(Settings(), store, broker))
        base, base_url = await serve(baseline_app(store))
        headers = {"Authorization": f"Bearer {token}"}
        figures: dict[str, list[float]] = {
            "ours": [],
            "base": [],
            "p99_small": [],
            "p99_large": [],
        }
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as http:
            for _ in range(rounds):
                await round_of(
                    http,
                    store,
                    our_url,
                    base_url,
                    headers,
                    small,
                    large,
                    requests,
                    concurrency,
                    figures,
                )
        await ours.cleanup()
        await base.cleanup()
        await broker.stop()
        await store.stop()
    report(figures, requests, concurrency)


async def round_of(
    http,
    store,
    our_url,
    base_url,
    headers,
    small,
    large,
    requests,
    concurrency,
    figures,
) -> None:
    completed = {t: await checkpoint_one(store, t) for t in (small, large)}

    def fresh(task_id: str):
        def check(body: dict) -> None:
            assert body["completed_documents"] == completed[task_id], body

        return check

    def fresh_row(body: dict) -> None:
        assert body["settled"]["completed"] == completed[small], body

    status = f"{our_url}/api/v1/task/{{}}/checkpoint-status?failed_limit=0"
    rps, _ = await load(
        http, status.format(small), headers, requests, concurrency, fresh(small)
    )
    figures["ours"].append(rps)
    rps, _ = await load(
        http, f"{base_url}/task/{small}", headers, requests, concurrency, fresh_row
    )
    figures["base"].append(rps)
    _, lat = await load(
        http, status.format(small), headers, requests // 2, 4, fresh(small)
    )
    figures["p99_small"].append(p99(lat))
    _, lat = await load(
        http, status.format(large), headers, requests // 2, 4, fresh(large)
    )
    figures["p99_large"].append(p99(lat))


def report(figures: dict[str, list[float]], requests: int, concurrency: int) -> None:
    ours = statistics.median(figures["ours"])
    base = statistics.median(figures["base"])
    small = statistics.median(figures["p99_small"])
    large = statistics.median(figures["p99_large"])
    print(
        f"requests per round: {requests}, concurrency {concurrency}; medians of rounds"
    )
    print(f"checkpoint-status   {ours:8.0f} req/s")
    print(f"baseline (row read) {base:8.0f} req/s")
    print(f"ratio               {ours / base:8.2f}   (target >= 0.7)")
    print(f"p99 at 1,000 docs   {small * 1000:8.2f} ms")
    print(f"p99 at 100,000 docs {large * 1000:8.2f} ms")
    print(f"ratio               {large / small:8.2f}   (target <= 1.2)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.requests, args.concurrency, args.rounds))
