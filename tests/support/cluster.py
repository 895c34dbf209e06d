"""Worker processes on real RabbitMQ and a real store, for fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from store.models import DocumentInput, NewTask, TaskConfig
from store.states import TaskState
from tests.store.invariants import all_documents, assert_counts_exact

ROOT = Path(__file__).resolve().parents[2]
ENDED = (
    TaskState.COMPLETED,
    TaskState.COMPLETED_WITH_FAILURES,
    TaskState.FAILED,
    TaskState.CANCELLED,
)


class WorkerProcess:
    """One ``run_worker`` process with a test processor; see worker_main."""

    def __init__(self, env: dict[str, str], log: Path, **extra: str) -> None:
        self.env = {**env, **extra}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.worker_main"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


class Cluster:
    """The settings that worker processes of one test share."""

    def __init__(
        self, tmp_path: Path, *, store_url: str, amqp_url: str | None, prefix: str
    ) -> None:
        self.tmp_path = tmp_path
        self.store_url = store_url
        self.prefix = prefix
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKPOINT_")},
            "PYTHONPATH": str(ROOT),
            "TASKPOINT_STORE_URL": store_url,
            "TASKPOINT_BROKER_URL": amqp_url or "",
            "TASKPOINT_BROKER_PREFIX": prefix,
            "TASKPOINT_SWEEP_INTERVAL": "0.2",
            "TASKPOINT_LEASE_SECONDS": "2",
            "TASKPOINT_WORKER_CONCURRENCY": "4",
            "TASKPOINT_JOB_SIZE": "10",
            "TASKPOINT_DRAIN_TIMEOUT": "5",
            "TASKPOINT_LOG_LEVEL": "WARNING",
        }
        self.workers: list[WorkerProcess] = []

    def worker(
        self, processor: dict[str, Any] | None = None, **env: str
    ) -> WorkerProcess:
        extra = {f"TASKPOINT_{k.upper()}": v for k, v in env.items()}
        extra["TEST_PROCESSOR"] = json.dumps(processor or {})
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env, log, **extra).start()
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(
            f"--- {w.log.name}\n{w.log.read_text()[-3000:]}"
            for w in self.workers
            if w.log.exists()
        )

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()


async def submit(store, n: int, *, type_: str = "fault", **config: Any) -> str:
    task = await store.create_task(
        NewTask(tenant="t", type=type_, config=TaskConfig(**config)),
        [DocumentInput(doc_id=f"d{i:04d}", text=f"text {i}") for i in range(n)],
    )
    return task.task_id


async def ended(store, task_id: str):
    task = await store.get_task(task_id)
    return task if task.state in ENDED else None


async def assert_invariants(store, task_id: str) -> None:
    """Counters exact, nothing completed twice, every completed one has a result."""
    await assert_counts_exact(store, task_id)
    for doc in await all_documents(store, task_id):
        outcomes = Counter(a.outcome for a in doc.attempt_log)
        assert outcomes["completed"] <= 1, (doc.doc_id, doc.attempt_log)
        if str(doc.state) == "completed":
            assert outcomes["completed"] == 1, (doc.doc_id, doc.attempt_log)
            result = await store.get_result(task_id, doc.doc_id)
            assert result is not None
            assert result["doc"] == doc.doc_id
