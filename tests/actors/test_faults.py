"""Faults against worker processes on real RabbitMQ, on both stores.

Each test runs real worker processes (``run_worker``, as ``taskpoint worker``
does) and kills, restarts or starves them; afterwards the store must show every
invariant of the design: exact counters, nothing completed twice, every
completed document with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time

import aio_pika
import pytest

from store.factory import store_from_url
from store.states import TaskState as T
from tests.store.invariants import all_documents
from tests.support.cluster import Cluster, assert_invariants, ended, submit
from tests.support.mongoeco import MongoEcoServer
from tests.support.proxy import CuttableProxy
from tests.support.rabbit import (
    broadcast_listeners,
    delete_prefixed,
    peek,
    publish_by_http,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

# mongoeco is slow and O(n) per operation: MongoDB tests keep tasks small.
SIZES = {"sqlite": 200, "mongodb": 60}
MONGO_QUERY = (
    "directConnection=true&serverSelectionTimeoutMS=60000"
    "&connectTimeoutMS=60000&socketTimeoutMS=120000"
)


@contextlib.asynccontextmanager
async def open_cluster(kind, request, tmp_path, amqp_url, prefix):
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/checkpoints.db?synchronous=normal"
    else:
        base = request.getfixturevalue("mongo_url").split("/?")[0]
        url = f"{base}/{prefix.replace('-', '_')}?{MONGO_QUERY}"
    store = store_from_url(url)
    await store.start()
    cluster = Cluster(tmp_path, store_url=url, amqp_url=amqp_url, prefix=prefix)
    cluster.store = store
    cluster.size = SIZES[kind]
    try:
        yield cluster
    finally:
        cluster.stop_all()
        await store.stop()
        await delete_prefixed(prefix)


@pytest.fixture(params=["sqlite", "mongodb"])
async def cluster(request, tmp_path, amqp_url, broker_prefix):
    """Worker processes on RabbitMQ with each store."""
    async with open_cluster(
        request.param, request, tmp_path, amqp_url, broker_prefix
    ) as cluster:
        yield cluster


@pytest.fixture
async def sqlite_cluster(request, tmp_path, amqp_url, broker_prefix):
    """For what concerns the broker or the supervisor alone: SQLite keeps it quick."""
    async with open_cluster("sqlite", request, tmp_path, amqp_url, broker_prefix) as c:
        yield c


async def run_to_end(cluster, task_id, *, within=120.0):
    try:
        return await eventually(lambda: ended(cluster.store, task_id), within=within)
    except AssertionError:
        raise AssertionError(f"task did not end\n{cluster.logs()}") from None


async def test_two_worker_processes_share_one_task(cluster):
    cluster.worker({"delay": 0.02})
    cluster.worker({"delay": 0.02})
    await eventually(lambda: _listening(cluster.prefix, 2), within=60)
    task_id = await submit(cluster.store, cluster.size)

    task = await run_to_end(cluster, task_id)

    assert task.state is T.COMPLETED
    await assert_invariants(cluster.store, task_id)
    pids = set()
    for i in range(0, cluster.size, 3):
        pids.add((await cluster.store.get_result(task_id, f"d{i:04d}"))["by"])
    assert len(pids) == 2, "both processes should have done work"


@pytest.mark.parametrize(
    ("failpoint", "delay"),
    [
        ("after-claim@3", 0.05),
        ("after-checkpoint@8", 0.05),
        # Documents long enough to be held across heartbeats.
        ("lease-extension@2", 1.0),
        ("mid-group-write@2", 0.05),
    ],
)
async def test_killed_at_a_failpoint_then_restarted_loses_nothing(
    cluster, failpoint, delay
):
    task_id = await submit(cluster.store, cluster.size, max_attempts=5)
    first = cluster.worker({"delay": delay}, failpoints=failpoint)
    await eventually(lambda: _dead(first), within=60)
    assert first.process.returncode == -9, cluster.logs()

    cluster.worker({"delay": 0.005})
    task = await run_to_end(cluster, task_id)

    assert task.state is T.COMPLETED
    await assert_invariants(cluster.store, task_id)


async def test_twenty_random_kills_lose_nothing(cluster):
    rng = random.Random(7)
    task_id = await submit(cluster.store, cluster.size, max_attempts=30)
    for _ in range(20):
        worker = cluster.worker({"delay": 0.01})
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        worker.kill()
        if (await cluster.store.get_task(task_id)).state is T.COMPLETED:
            break
    cluster.worker({"delay": 0.005})

    task = await run_to_end(cluster, task_id)

    assert task.state is T.COMPLETED
    await assert_invariants(cluster.store, task_id)


async def test_a_document_that_kills_its_worker_fails_and_the_rest_complete(cluster):
    task_id = await submit(cluster.store, 20, max_attempts=2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if await ended(cluster.store, task_id):
            break
        if not any(w.alive for w in cluster.workers):
            cluster.worker({"kill": ["d0005"], "delay": 0.01})
        await asyncio.sleep(0.1)

    task = await run_to_end(cluster, task_id, within=1)
    assert task.state is T.COMPLETED_WITH_FAILURES
    doc = await cluster.store.get_document(task_id, "d0005")
    assert (str(doc.state), doc.error.type) == ("failed", "WorkerLost")
    assert (await cluster.store.counts(task_id)).completed == 19
    await assert_invariants(cluster.store, task_id)


async def test_control_published_through_the_management_api(cluster):
    task_id = await submit(cluster.store, cluster.size)
    cluster.worker({"delay": 0.05})
    await eventually(lambda: _completed_some(cluster.store, task_id, 5), within=60)

    control = f"{cluster.prefix}.control"
    assert await publish_by_http(control, {"task_id": task_id, "action": "pause"})
    paused = await eventually(lambda: _in(cluster.store, task_id, T.PAUSED), within=30)
    done_then = (await cluster.store.counts(task_id)).completed
    await asyncio.sleep(0.5)
    assert (await cluster.store.counts(task_id)).completed == done_then
    assert paused.paused_at is not None

    assert await publish_by_http(control, {"task_id": task_id, "action": "resume"})
    task = await run_to_end(cluster, task_id)
    assert task.state is T.COMPLETED
    await assert_invariants(cluster.store, task_id)


async def test_malformed_control_lands_in_the_dead_letter_queue(sqlite_cluster):
    worker = sqlite_cluster.worker()
    control = f"{sqlite_cluster.prefix}.control"
    await eventually(
        lambda: publish_by_http(control, {"task_id": "t", "action": "nap"})
    )
    assert await publish_by_http(control, "{not json")

    letters = await eventually(
        lambda: _dead_letters(sqlite_cluster.prefix, 2), within=30
    )

    reasons = [m["properties"]["headers"]["x-taskpoint-reason"] for m in letters]
    assert any("action" in r for r in reasons)
    assert all(r.startswith("malformed control message") for r in reasons)
    assert worker.alive
    task_id = await submit(sqlite_cluster.store, 10)
    assert (await run_to_end(sqlite_cluster, task_id)).state is T.COMPLETED


async def test_embedded_single_process_killed_and_restarted_resumes(
    sqlite_cluster, tmp_path
):
    sqlite_cluster.env["TASKPOINT_BROKER_URL"] = ""
    task_id = await submit(sqlite_cluster.store, 300)
    first = sqlite_cluster.worker({"delay": 0.01})
    await eventually(
        lambda: _completed_some(sqlite_cluster.store, task_id, 30), within=60
    )
    first.kill()
    done_before = (await sqlite_cluster.store.counts(task_id)).completed

    sqlite_cluster.worker({"delay": 0.005})
    task = await run_to_end(sqlite_cluster, task_id)

    assert task.state is T.COMPLETED
    assert done_before >= 30
    await assert_invariants(sqlite_cluster.store, task_id)


async def _dead(worker):
    return not worker.alive


async def _in(store, task_id, state):
    task = await store.get_task(task_id)
    return task if task.state is state else None


async def _completed_some(store, task_id, n):
    return (await store.counts(task_id)).completed >= n


async def _dead_letters(prefix: str, n: int):
    messages = await peek(f"{prefix}.control.dead")
    return messages if len(messages) >= n else None


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


async def test_broker_stopped_and_started_mid_task(sqlite_cluster):
    task_id = await submit(sqlite_cluster.store, 300)
    sqlite_cluster.worker({"delay": 0.02})
    await eventually(
        lambda: _completed_some(sqlite_cluster.store, task_id, 40), within=60
    )

    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")

    task = await run_to_end(sqlite_cluster, task_id, within=180)
    assert task.state is T.COMPLETED
    await assert_invariants(sqlite_cluster.store, task_id)
    assert all(w.alive for w in sqlite_cluster.workers), sqlite_cluster.logs()


async def test_connections_cut_and_restored_through_a_proxy(cluster, amqp_url):
    proxy = CuttableProxy(target_port=5672)
    await proxy.listen()
    cluster.env["TASKPOINT_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    task_id = await submit(cluster.store, cluster.size)
    worker = cluster.worker({"delay": 0.02})
    await eventually(lambda: _completed_some(cluster.store, task_id, 10), within=60)

    await proxy.outage()
    await asyncio.sleep(3)
    await proxy.listen()

    task = await run_to_end(cluster, task_id, within=180)
    assert task.state is T.COMPLETED
    assert worker.alive, cluster.logs()
    await assert_invariants(cluster.store, task_id)
    await proxy.outage()


def rabbit_env(key: str) -> str | None:
    out = rabbitmqctl("eval", f"application:get_env(rabbit, {key}).").strip()
    return (
        out.removeprefix("{ok,").removesuffix("}") if out.startswith("{ok,") else None
    )


@pytest.fixture
def short_consumer_timeout():
    # RabbitMQ checks consumer timeouts on each channel tick: shorten both,
    # for channels opened from now on, and put the old values back afterwards.
    saved = {k: rabbit_env(k) for k in ("consumer_timeout", "channel_tick_interval")}
    rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 3000).")
    rabbitmqctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")
    yield 3.0
    for key, value in saved.items():
        if value is None:
            value = "60000" if key == "channel_tick_interval" else "1800000"
        rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {value}).")


async def test_a_document_outliving_the_consumer_timeout_completes_once(
    sqlite_cluster, short_consumer_timeout, amqp_url, broker_prefix
):
    # The control experiment: a consumer that holds a delivery longer than the
    # timeout has its channel closed by RabbitMQ.
    assert await raw_consumer_is_closed(amqp_url, f"{broker_prefix}.probe", 6.0)

    task_id = await submit(sqlite_cluster.store, 2)
    worker = sqlite_cluster.worker({"delay": 7.0})
    task = await run_to_end(sqlite_cluster, task_id, within=60)

    assert task.state is T.COMPLETED
    assert worker.alive
    for doc_id in ("d0000", "d0001"):
        doc = await sqlite_cluster.store.get_document(task_id, doc_id)
        assert [a.outcome for a in doc.attempt_log] == ["completed"]
    await assert_invariants(sqlite_cluster.store, task_id)


async def raw_consumer_is_closed(url: str, queue_name: str, hold: float) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"x"), routing_key=queue_name
        )
        got = asyncio.get_running_loop().create_future()

        async def hold_unacked(message):
            got.set_result(message)

        await queue.consume(hold_unacked)
        await asyncio.wait_for(got, 10)
        closed = asyncio.Event()
        channel.close_callbacks.add(lambda *_: closed.set())
        try:
            await asyncio.wait_for(closed.wait(), hold)
        except TimeoutError:
            return False
        return True
    finally:
        await connection.close()


async def test_twenty_tasks_at_once_share_the_workers(sqlite_cluster):
    sqlite_cluster.env["TASKPOINT_WORKER_CONCURRENCY"] = "20"
    sqlite_cluster.env["TASKPOINT_JOB_SIZE"] = "2"
    sqlite_cluster.worker({"delay": 0.05})
    await eventually(lambda: _listening(sqlite_cluster.prefix, 1), within=60)
    tasks = [await submit(sqlite_cluster.store, 120) for _ in range(20)]

    for task_id in tasks:
        await run_to_end(sqlite_cluster, task_id, within=60)

    firsts, finishes, starts = [], {}, []
    for task_id in tasks:
        task = await sqlite_cluster.store.get_task(task_id)
        docs = await all_documents(sqlite_cluster.store, task_id)
        finishes[task_id] = sorted(d.finished_at for d in docs)
        firsts.append((finishes[task_id][0] - task.started_at).total_seconds())
        starts.append(task.started_at)
    assert max(firsts) < 2.0, firsts
    # Fair share: while every task is running, each completes documents at
    # no less than half the mean rate.
    window_start = max(starts)
    window_end = min(f[-1] for f in finishes.values())
    assert (window_end - window_start).total_seconds() >= 1.0
    shares = {
        task_id: sum(window_start <= f < window_end for f in finished)
        for task_id, finished in finishes.items()
    }
    fair = sum(shares.values()) / len(shares)
    assert min(shares.values()) >= fair / 2, shares


async def test_mongodb_server_restarted_mid_task(tmp_path, amqp_url, broker_prefix):
    server = MongoEcoServer(sqlite_path=tmp_path / "mongo.db")
    await asyncio.to_thread(server.start)
    url = server.url.replace("/?", "/restart?") + "&" + MONGO_QUERY.split("&", 1)[1]
    store = store_from_url(url)
    await store.start()
    cluster = Cluster(tmp_path, store_url=url, amqp_url=amqp_url, prefix=broker_prefix)
    try:
        task_id = await submit(store, 40)
        cluster.worker({"delay": 0.05})
        await eventually(lambda: _completed_some(store, task_id, 5), within=60)

        await asyncio.to_thread(server.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(server.start)

        task = await eventually(lambda: ended(store, task_id), within=120)
        assert task.state is T.COMPLETED, cluster.logs()
        assert all(w.alive for w in cluster.workers), cluster.logs()
        await assert_invariants(store, task_id)
    finally:
        cluster.stop_all()
        await store.stop()
        await asyncio.to_thread(server.stop)
        await delete_prefixed(broker_prefix)


async def test_sigterm_lets_in_flight_documents_finish(sqlite_cluster):
    store = sqlite_cluster.store
    task_id = await submit(store, 40)
    worker = sqlite_cluster.worker({"delay": 1.0})
    await eventually(lambda: _running(store, task_id, 4), within=30)

    returncode = await asyncio.to_thread(worker.terminate, 30)

    assert returncode == 0, sqlite_cluster.logs()
    counts = await store.counts(task_id)
    assert (counts.running, counts.completed) == (0, 4)
    # The four that ran finished; the claims that had not started were given
    # back, their attempt refunded.
    for doc in await all_documents(store, task_id):
        assert [a.outcome for a in doc.attempt_log] in (
            [],
            ["completed"],
            ["interrupted"],
        )
        assert doc.attempts == (1 if str(doc.state) == "completed" else 0)
    sqlite_cluster.worker({"delay": 0.01})
    assert (await run_to_end(sqlite_cluster, task_id)).state is T.COMPLETED
    await assert_invariants(store, task_id)


async def test_a_second_sigterm_exits_at_once(sqlite_cluster):
    store = sqlite_cluster.store
    task_id = await submit(store, 8)
    worker = sqlite_cluster.worker({"delay": 60.0}, drain_timeout="60")
    await eventually(lambda: _running(store, task_id, 4), within=30)

    worker.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert worker.alive
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(worker.process.wait, 10)

    assert time.monotonic() - started < 5
    assert returncode == 128 + signal.SIGTERM
    sqlite_cluster.worker({"delay": 0.01})
    assert (await run_to_end(sqlite_cluster, task_id)).state is T.COMPLETED
    await assert_invariants(store, task_id)


async def _running(store, task_id, n):
    return (await store.counts(task_id)).running >= n


async def _listening(prefix, n):
    return await broadcast_listeners(prefix) >= n


async def test_store_connection_cut_and_restored_through_a_proxy(
    request, tmp_path, amqp_url, broker_prefix
):
    mongo_url = request.getfixturevalue("mongo_url")
    port = int(mongo_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = CuttableProxy(target_port=port)
    await proxy.listen()
    database = broker_prefix.replace("-", "_")
    direct = f"mongodb://127.0.0.1:{port}/{database}?{MONGO_QUERY}"
    store = store_from_url(direct)
    await store.start()
    proxied = f"mongodb://127.0.0.1:{proxy.port}/{database}?{MONGO_QUERY}"
    cluster = Cluster(
        tmp_path, store_url=proxied, amqp_url=amqp_url, prefix=broker_prefix
    )
    try:
        task_id = await submit(store, 40)
        worker = cluster.worker({"delay": 0.05})
        await eventually(lambda: _completed_some(store, task_id, 5), within=60)

        await proxy.outage()
        await asyncio.sleep(3)
        await proxy.listen()

        task = await eventually(lambda: ended(store, task_id), within=120)
        assert task.state is T.COMPLETED, cluster.logs()
        assert worker.alive, cluster.logs()
        await assert_invariants(store, task_id)
    finally:
        cluster.stop_all()
        await store.stop()
        await proxy.outage()
        await delete_prefixed(broker_prefix)


async def test_finalize_killed_midway_is_adopted_and_finished(cluster):
    store = cluster.store
    size = 250 if cluster.size > 100 else 120
    task_id = await submit(store, size, type_="fault-merge")
    first = cluster.worker({"delay": 0.0}, failpoints="mid-finalize@1")
    await eventually(lambda: _dead(first), within=60)
    assert (await store.get_task(task_id)).state is T.FINALIZING
    half = await store.get_task_result(task_id)
    assert half["documents"] == 100

    cluster.worker({"delay": 0.0})
    task = await run_to_end(cluster, task_id)

    assert task.state is T.COMPLETED
    state = await store.get_task_result(task_id)
    assert state["documents"] == size
    assert len(state["result"]["docs"]) == size
    await assert_invariants(store, task_id)
