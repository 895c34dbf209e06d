"""The supervisor on the embedded pair: in-process broker and SQLite store."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from actors.broker_memory import MemoryBroker
from actors.messages import ControlMessage
from actors.supervisor import Supervisor, SupervisorConfig
from store.models import DocumentInput, NewTask, TaskConfig
from store.sqlite import SQLiteStore
from store.states import DocumentState as D
from store.states import TaskState as T
from tests.store.invariants import assert_counts_exact
from tests.support.processors import MergingProcessor, ScriptedProcessor
from tests.support.waiting import eventually


async def task_in(store, task_id, *states):
    task = await store.get_task(task_id)
    return task if task.state in states else None


class Embedded:
    def __init__(self, tmp_path, processor, **config):
        self.store = SQLiteStore(tmp_path / "cp.db", synchronous="normal")
        self.broker = MemoryBroker()
        self.processor = processor
        self.config = SupervisorConfig(sweep_interval=0.1, lease_seconds=5, **config)
        self.supervisor = None

    async def __aenter__(self):
        await self.store.start()
        await self.broker.start()
        self.supervisor = Supervisor(
            self.store, self.broker, self.config, processors=lambda _: self.processor
        )
        await self.supervisor.start()
        return self

    async def __aexit__(self, *exc):
        await self.supervisor.stop(timeout=30)
        await self.broker.stop()
        await self.store.stop()

    async def submit(self, n, **config):
        task = await self.store.create_task(
            NewTask(tenant="t", type="scripted", config=TaskConfig(**config)),
            [DocumentInput(doc_id=f"d{i:04d}", text=f"text {i}") for i in range(n)],
        )
        return task.task_id

    async def control(self, task_id, action, **kw):
        msg = ControlMessage(task_id=task_id, action=action, **kw)
        await self.broker.publish_control(msg.model_dump_json().encode())


async def test_a_task_runs_to_completion_with_results_and_tokens(tmp_path):
    processor = ScriptedProcessor(tokens=(10, 3))
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task_id = await env.submit(200)
        task = await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        assert task.tokens.prompt == 2000
        assert await env.store.get_result(task_id, "d0007") == {
            "doc": "d0007",
            "attempt": 1,
        }
        assert sorted(processor.started) == [f"d{i:04d}" for i in range(200)]
        await assert_counts_exact(env.store, task_id)


async def test_failures_retry_then_fail_and_retry_failed_recovers(tmp_path):
    processor = ScriptedProcessor(
        transient={"d0001": 1, "d0002": 9}, permanent={"d0003"}
    )
    async with Embedded(tmp_path, processor) as env:
        task_id = await env.submit(
            6, max_attempts=3, backoff_base=0.05, backoff_cap=0.1
        )
        task = await eventually(
            lambda: task_in(env.store, task_id, T.COMPLETED_WITH_FAILURES)
        )
        assert task.settled.failed == 2
        assert processor.attempts["d0001"] == 2
        assert processor.attempts["d0002"] == 3
        assert processor.attempts["d0003"] == 1
        processor.permanent.clear()
        processor.transient.clear()
        await env.control(task_id, "retry_failed", doc_ids=["d0003"])
        await eventually(lambda: _attempted(processor, "d0003", 2))
        task = await eventually(
            lambda: task_in(env.store, task_id, T.COMPLETED_WITH_FAILURES)
        )
        assert task.settled.failed == 1
        await env.control(task_id, "retry-failed")
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        assert processor.attempts["d0002"] == 4
        await assert_counts_exact(env.store, task_id)


async def test_pause_holds_every_start_and_resume_finishes_exactly_the_rest(tmp_path):
    processor = ScriptedProcessor(delay=0.01)
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task_id = await env.submit(300)
        await eventually(lambda: _started(processor, 40))
        await env.control(task_id, "pause", request_id="p1")
        paused = await eventually(lambda: task_in(env.store, task_id, T.PAUSED))
        started_at_pause = len(processor.started)
        await asyncio.sleep(0.5)
        assert len(processor.started) == started_at_pause
        counts = await env.store.counts(task_id)
        assert counts.running == 0
        assert counts.completed == started_at_pause
        assert paused.paused_at is not None

        await env.control(task_id, "resume")
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        assert sorted(processor.started) == [f"d{i:04d}" for i in range(300)]
        history = [h.to_state for h in await env.store.history(task_id)]
        assert history[-4:] == [T.PAUSING, T.PAUSED, T.RUNNING, T.COMPLETED]
        await assert_counts_exact(env.store, task_id)


async def test_cancel_interrupts_in_flight_documents_and_keeps_completed(tmp_path):
    processor = ScriptedProcessor(gate=asyncio.Event(), tokens=(5, 0))
    async with Embedded(tmp_path, processor, concurrency=3) as env:
        task_id = await env.submit(20)
        await eventually(lambda: _started(processor, 3))
        await env.control(task_id, "cancel")
        task = await eventually(lambda: task_in(env.store, task_id, T.CANCELLED))
        counts = await env.store.counts(task_id)
        assert (counts.cancelled, counts.completed, counts.open) == (20, 0, 0)
        assert task.tokens.prompt == 15
        running_then = await env.store.page_documents(
            task_id, state=D.CANCELLED, limit=3
        )
        assert [a.outcome for a in running_then[0].attempt_log] == ["cancelled"]
        await assert_counts_exact(env.store, task_id)


async def test_malformed_control_is_dead_lettered_and_supervisor_keeps_running(
    tmp_path,
):
    async with Embedded(tmp_path, ScriptedProcessor()) as env:
        await env.broker.publish_control(b'{"task_id": "x", "action": "explode"}')
        await env.broker.publish_control(b"not json")
        await env.control("nosuchtask", "pause")
        await eventually(lambda: _dead(env.broker, 3))
        reasons = [reason for _, reason in env.broker.dead_letters()]
        assert "action" in reasons[0]
        assert "does not exist" in reasons[2]
        task_id = await env.submit(5)
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))


async def test_legacy_mode_refuses_pause_and_fails_whole(tmp_path):
    processor = ScriptedProcessor(permanent={"d0002"}, delay=0.01)
    async with Embedded(tmp_path, processor, concurrency=1) as env:
        task_id = await env.submit(30, use_checkpoints=False)
        await eventually(lambda: _started(processor, 1))
        await env.control(task_id, "pause", request_id="legacy-pause")
        task = await eventually(lambda: task_in(env.store, task_id, T.FAILED))
        assert "d0002" in task.reason
        history = await env.store.history(task_id)
        refused = [h for h in history if not h.accepted]
        assert refused[0].request_id == "legacy-pause"
        assert "cannot pause" in refused[0].reason
        await eventually(lambda: _quiet(env.store, task_id))
        await assert_counts_exact(env.store, task_id)


async def _started(processor, n):
    return len(processor.started) >= n


async def _dead(broker, n):
    return len(broker.dead_letters()) >= n


async def _quiet(store, task_id):
    return (await store.counts(task_id)).open == 0


async def _attempted(processor, doc_id, n):
    return processor.attempts[doc_id] >= n


async def test_per_task_concurrency_and_fair_share(tmp_path):
    processor = ScriptedProcessor(delay=0.02)
    async with Embedded(tmp_path, processor, concurrency=8) as env:
        narrow = await env.submit(40, concurrency=2)
        wide = await env.submit(120)
        await eventually(lambda: task_in(env.store, narrow, T.COMPLETED), within=30)
        await eventually(lambda: task_in(env.store, wide, T.COMPLETED), within=30)
    assert processor.most_in_flight[narrow] == 2
    assert processor.most_in_flight[wide] >= 6
    assert processor.cpu_thread != threading.main_thread().name


async def test_processors_are_found_through_entry_points():
    from actors.processors import UnknownProcessor, load_processor

    assert load_processor("noop").name == "noop"
    with pytest.raises(UnknownProcessor, match="noop"):
        load_processor("no-such-processor")


async def test_a_broadcast_starts_a_new_task_before_the_next_sweep(tmp_path):
    processor = ScriptedProcessor()
    async with Embedded(tmp_path, processor) as env:
        env.supervisor.config.sweep_interval = 3600
        await asyncio.sleep(0.3)  # the running timer still has the short interval
        for timer in env.supervisor._timers[:1]:
            timer.cancel()
        task_id = await env.submit(3)
        await env.broker.broadcast(json.dumps({"task_id": task_id}).encode())
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED), within=5)


async def test_token_budget_pauses_exactly_at_concurrency_one(tmp_path):
    processor = ScriptedProcessor(tokens=(7, 3))
    async with Embedded(tmp_path, processor, concurrency=1) as env:
        task_id = await env.submit(30, token_budget=45)
        task = await eventually(lambda: task_in(env.store, task_id, T.PAUSED))
        # Each document spends 10: the fifth crosses 45 and no sixth starts.
        assert len(processor.started) == 5
        assert task.tokens.total == 50
        assert "token budget of 45 reached" in task.reason
        await asyncio.sleep(0.3)
        assert len(processor.started) == 5


async def test_token_budget_overshoot_is_bounded_by_what_was_in_flight(tmp_path):
    processor = ScriptedProcessor(tokens=(10, 0), delay=0.02)
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task_id = await env.submit(100, token_budget=200)
        task = await eventually(lambda: task_in(env.store, task_id, T.PAUSED))
        assert 200 <= task.tokens.total <= 200 + 4 * 10
        assert len(processor.started) * 10 == task.tokens.total


async def test_a_failing_provider_pauses_the_task_instead_of_burning_retries(tmp_path):
    processor = ScriptedProcessor(transient={f"d{i:04d}": 99 for i in range(50)})
    async with Embedded(
        tmp_path, processor, concurrency=1, provider_failure_pause=3
    ) as env:
        task_id = await env.submit(
            50, max_attempts=5, backoff_base=0.05, backoff_cap=0.1
        )
        task = await eventually(lambda: task_in(env.store, task_id, T.PAUSED))
        assert "3 documents in a row failed transiently" in task.reason
        assert "TransientError" in task.reason
        assert len(processor.started) <= 4
        status = await env.store.counts(task_id)
        assert status.failed == 0

        processor.transient.clear()
        await env.control(task_id, "resume")
        done = await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        assert done.reason is None


async def test_a_merging_task_finalizes_and_retry_merges_only_the_new(tmp_path):
    processor = MergingProcessor(permanent={"d0003"})
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task_id = await env.submit(250)
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED_WITH_FAILURES))
        history = [h.to_state for h in await env.store.history(task_id)]
        assert history[-2:] == [T.FINALIZING, T.COMPLETED_WITH_FAILURES]
        state = await env.store.get_task_result(task_id)
        assert state["documents"] == 249
        assert len(state["result"]["docs"]) == 249
        assert "d0003" not in state["result"]["docs"]
        assert processor.merges == 3  # 100 + 100 + 49

        processor.permanent.clear()
        await env.control(task_id, "retry-failed")
        await eventually(lambda: _attempted(processor, "d0003", 2))
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        state = await env.store.get_task_result(task_id)
        assert state["documents"] == 250
        assert len(state["result"]["docs"]) == 250
        assert processor.merges == 4  # only the one new document


async def test_finalizing_can_be_paused_and_resumed(tmp_path):
    processor = MergingProcessor(merge_delay=0.2)
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task_id = await env.submit(500)
        await eventually(lambda: task_in(env.store, task_id, T.FINALIZING))
        await env.control(task_id, "pause")
        await eventually(lambda: task_in(env.store, task_id, T.PAUSED))
        await asyncio.sleep(0.5)
        merged_then = (await env.store.get_task_result(task_id))["documents"]
        assert merged_then < 500
        await asyncio.sleep(0.4)
        assert (await env.store.get_task_result(task_id))["documents"] == merged_then

        await env.control(task_id, "resume")
        await eventually(lambda: task_in(env.store, task_id, T.COMPLETED))
        state = await env.store.get_task_result(task_id)
        assert (state["documents"], len(state["result"]["docs"])) == (500, 500)
