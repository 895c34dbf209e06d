"""The supervisor actor: owns the broker connection, the workers, and control.

One supervisor runs per process. It consumes the job queue of every running
task, claims the documents a job names, and hands them to its document workers
fairly across tasks; it consumes the shared control queue and applies control
requests with a compare-and-set in the store; it hears every supervisor's
broadcasts and reacts at once (pause closes the gate, cancel interrupts); and a
periodic sweep reconciles the broker with the store: it starts new tasks,
reclaims expired leases, re-dispatches documents whose retry time has come,
settles pausing and cancelling tasks, completes finished ones, and republishes
the open documents of a task whose queue ran dry while work remained.

Why jobs are acked at claim time: once the claim is durable, the store's lease
is the record of the work in flight. A crash after it leaves a lease that the
sweep reclaims and re-dispatches, and no delivery stays unacked while a
document runs, so RabbitMQ's consumer timeout cannot trip however long a
document takes. See ``docs/actors.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from actors import failpoints
from actors.broker import Broker, Delivery, Subscription
from actors.checkpointer import Checkpointer
from actors.control import apply_control
from actors.core import Actor, ChildSpec, RestartLimitReached, Supervision
from actors.errors import BrokerError
from actors.llm import LLMBackend
from actors.messages import ControlMessage, DocumentJob
from actors.processors import Processor, load_processor
from actors.processors.base import Merging
from actors.worker import DocumentWorker, Finished, WorkItem
from store.base import CheckpointStore
from store.errors import StoreError, TaskNotFound, TransitionRefused
from store.models import Claim, Outcome, Task
from store.states import DocumentState, TaskState

logger = logging.getLogger(__name__)

T = TaskState
LIVE_STATES = (T.RUNNING, T.PAUSING, T.CANCELLING, T.FINALIZING)
FINALIZE_BATCH = 100
ENDED_STATES = (T.CANCELLED, T.COMPLETED, T.COMPLETED_WITH_FAILURES, T.FAILED)


def default_owner() -> str:
    """Return a name for this process's leases: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class SupervisorConfig:
    """How a supervisor runs.

    Attributes:
        concurrency: documents in flight in this process.
        lease_seconds: the lease of a claimed document, extended every third.
        job_size: document ids per job message.
        sweep_interval: seconds between two sweeps.
        time_limit: the longest one attempt may run, in seconds.
        drain_timeout: on stop, how long in-flight documents may finish.
        provider_failure_pause: a task pauses itself after this many documents
            in a row fail transiently (0: never).
    """

    concurrency: int = 8
    lease_seconds: float = 60.0
    job_size: int = 16
    sweep_interval: float = 1.0
    time_limit: float = 3600.0
    drain_timeout: float = 30.0
    provider_failure_pause: int = 5
    owner: str = field(default_factory=default_owner)


@dataclass
class TaskRun:
    """What this process holds of one task."""

    task: Task
    processor: Processor
    capacity: int
    ready: deque[Claim] = field(default_factory=deque)
    inflight: dict[str, tuple[DocumentWorker, Claim]] = field(default_factory=dict)
    subscription: Subscription | None = None
    room: asyncio.Event = field(default_factory=asyncio.Event)
    suspects: set[str] = field(default_factory=set)
    claiming: int = 0
    stalled_sweeps: int = 0
    spent: int = 0
    failing_streak: int = 0
    pause_asked: bool = False

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id

    @property
    def is_open(self) -> bool:
        """Whether documents of this task may start here."""
        return self.task.state is T.RUNNING

    def has_room(self) -> bool:
        """Whether the buffer of claimed, unstarted documents has room.

        Claims on their way count too, so that several jobs arriving at once
        do not all claim into the same room. A job larger than the buffer is
        let through when the buffer is empty.
        """
        return len(self.ready) + self.claiming < self.capacity

    def over_budget(self) -> bool:
        """Whether the tokens spent reached the task's budget."""
        budget = self.task.config.token_budget
        return budget is not None and self.spent >= budget

    def under_limit(self) -> bool:
        """Whether the task's own concurrency limit allows one more document."""
        limit = self.task.config.concurrency
        return limit is None or len(self.inflight) < limit


@dataclass(frozen=True)
class ControlIn:
    """A control delivery, applied inside the supervisor's mailbox."""

    delivery: Delivery


@dataclass(frozen=True)
class StateIn:
    """A task whose state changed (broadcast, or seen by this supervisor)."""

    task_id: str


@dataclass(frozen=True)
class Sweep:
    """Time for a sweep."""


@dataclass(frozen=True)
class Idle:
    """A running task has nothing left here: see whether it has ended."""

    task_id: str


class Supervisor(Actor):
    """Runs tasks' documents in this process; see the module docstring.

    Args:
        store: the checkpoint store (started by the caller).
        broker: the broker (started by the caller).
        config: how to run.
        processors: finds the processor of a task type.
        llm: the process's LLM backend, shared by every worker.
    """

    def __init__(
        self,
        store: CheckpointStore,
        broker: Broker,
        config: SupervisorConfig | None = None,
        *,
        processors: Callable[[str], Processor] = load_processor,
        llm: LLMBackend | None = None,
    ) -> None:
        super().__init__("supervisor")
        self.llm = llm
        self.store = store
        self.broker = broker
        self.config = config or SupervisorConfig()
        self.processors = processors
        self.runs: dict[str, TaskRun] = {}
        self.idle: deque[DocumentWorker] = deque()
        self.checkpointer = Checkpointer(store)
        self.supervision = Supervision(on_give_up=self._worker_given_up)
        self._subscriptions: list[Subscription] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.Task[None]] = []
        self._recent: dict[tuple[str, str], float] = {}
        self._rr = 0
        self._quiet = asyncio.Event()
        self._stopping = False
        # Set while no suspect document is claimed here (see _pump).
        self._isolation = asyncio.Event()
        self._isolation.set()
        self._finalizing: set[str] = set()
        self.started_documents = 0

    # Lifecycle

    async def on_start(self) -> None:
        """Start workers, consume control and broadcasts, sweep once, start timers."""
        self.checkpointer.start()
        await self.supervision.start(
            ChildSpec(f"worker-{i}", self._new_worker)
            for i in range(self.config.concurrency)
        )
        self._subscriptions.append(
            await self.broker.consume_control(self._on_control, prefetch=16)
        )
        self._subscriptions.append(
            await self.broker.consume_broadcasts(self._on_broadcast)
        )
        await self._sweep()
        self._timers = [
            asyncio.create_task(self._every(self.config.sweep_interval, self._tick)),
            asyncio.create_task(
                self._every(self.config.lease_seconds / 3, self._heartbeat)
            ),
        ]
        logger.info(
            "supervisor started owner=%s concurrency=%d",
            self.config.owner,
            self.config.concurrency,
        )

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (a grace period, as in Actor.stop)
        """Stop consuming first, so that nothing arrives for a closed mailbox."""
        await self._stop_consuming()
        await super().stop(timeout)

    async def _stop_consuming(self) -> None:
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        self._timers = []
        subscriptions, self._subscriptions = self._subscriptions, []
        for run in self.runs.values():
            if run.subscription is not None:
                subscriptions.append(run.subscription)
                run.subscription = None
        for sub in subscriptions:
            # Cancelling requeues what the consumer held unacked.
            with contextlib.suppress(Exception):
                await sub.cancel()

    async def on_stop(self) -> None:
        """Stop in order: consuming, in-flight work (bounded), writes, workers."""
        await self._stop_consuming()
        for run in self.runs.values():
            await self._release_ready(run, DocumentState.PENDING)
        await self._drain()
        await self._settle_background()
        await self.checkpointer.stop()
        await self.supervision.stop()
        logger.info(
            "supervisor stopped owner=%s documents_started=%d",
            self.config.owner,
            self.started_documents,
        )

    async def _drain(self) -> None:
        # Workers first finish what they started, up to the bound; what is
        # still running then is interrupted and given back (its attempt
        # refunded), and the checkpointer writes every outcome before it stops.
        await self._wait_quiet(self.config.drain_timeout)
        for run in self.runs.values():
            for worker, _ in list(run.inflight.values()):
                worker.interrupt(run.task_id, DocumentState.PENDING)
        await self._wait_quiet(5.0)

    async def _wait_quiet(self, seconds: float) -> None:
        """Wait up to ``seconds`` until no document is in flight here."""
        if not self._inflight_total():
            return
        self._quiet.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._quiet.wait()

    def _inflight_total(self) -> int:
        return sum(len(r.inflight) for r in self.runs.values())

    def _new_worker(self) -> DocumentWorker:
        worker = DocumentWorker(
            f"worker-{len(self.idle)}",
            store=self.store,
            checkpointer=self.checkpointer,
            may_start=self._may_start,
            report=self._on_finished,
            time_limit=self.config.time_limit,
            llm=self.llm,
        )
        self.idle.append(worker)
        return worker

    async def _worker_given_up(self, report: RestartLimitReached) -> None:
        logger.error("a document worker keeps failing and was given up: %s", report)

    # Messages

    async def on_receive(self, message: Any) -> None:
        """Handle control, state changes and sweeps one at a time."""
        if isinstance(message, ControlIn):
            await self._apply_control(message.delivery)
        elif isinstance(message, StateIn):
            await self._on_state(message.task_id)
        elif isinstance(message, Sweep):
            await self._sweep()
        elif isinstance(message, Idle):
            await self._complete_if_done(message.task_id)

    async def _on_control(self, delivery: Delivery) -> None:
        await self.ask(ControlIn(delivery))

    async def _on_broadcast(self, delivery: Delivery) -> None:
        try:
            task_id = json.loads(delivery.body)["task_id"]
        except (ValueError, KeyError, TypeError):
            logger.warning(
                "broadcast without a task id ignored: %r", delivery.body[:200]
            )
        else:
            self.tell(StateIn(str(task_id)))
        await delivery.ack()

    async def _tick(self) -> None:
        if self.actor_alive:
            await self.ask(Sweep())

    async def _every(
        self, seconds: float, fn: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except Exception:
                logger.exception("periodic %s failed; trying again", fn.__name__)

    # Control

    async def _apply_control(self, delivery: Delivery) -> None:
        try:
            msg = ControlMessage.model_validate_json(delivery.body)
        except ValidationError as err:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                for e in err.errors()
            )
            await self._dead_letter(delivery, f"malformed control message: {reason}")
            return
        try:
            applied = await apply_control(self.store, msg)
        except TaskNotFound as err:
            await self._dead_letter(delivery, str(err))
            return
        # The transition is durable before the message goes: a crash between
        # the two redelivers it, and applying it again is harmless.
        await delivery.ack()
        logger.info(
            "control task_id=%s action=%s request_id=%s changed=%s refused=%s",
            msg.task_id,
            msg.action,
            msg.request_id,
            applied.changed,
            applied.refused,
        )
        if applied.reset:
            self._publish(msg.task_id, applied.reset)
        if applied.changed:
            await self._after_change(applied.task)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        logger.warning(
            "control message dead-lettered: %s body=%r", reason, delivery.body[:200]
        )
        await self.broker.dead_letter(delivery, reason)

    async def _after_change(self, task: Task) -> None:
        """React here at once, then tell every other supervisor."""
        if task.state is T.RUNNING and await self.broker.job_depth(task.task_id) == 0:
            # Resumed or retried with nothing queued: put its open documents
            # back on its queue (duplicates are skipped at claim time).
            self._spawn(self._publish_open(task.task_id))
        await self._on_state(task.task_id, task)
        await self.broker.broadcast(
            json.dumps({"task_id": task.task_id, "state": str(task.state)}).encode()
        )

    # State changes

    async def _on_state(self, task_id: str, task: Task | None = None) -> None:
        try:
            task = task or await self.store.get_task(task_id)
        except TaskNotFound:
            return
        run = self.runs.get(task_id)
        if task.state is T.PENDING and task.sealed and not self._stopping:
            # A new task announced on the broadcast: start it now rather than
            # at the next sweep.
            await self._start_task(task)
        elif task.state is T.RUNNING:
            await self._open(run or self._new_run(task), task)
        elif run is not None:
            run.task = task
            await self._close(run)
        if task.state in (T.PAUSING, T.CANCELLING):
            await self._settle_task(task)
        elif task.state is T.FINALIZING:
            await self._adopt_finalize(task)

    def _new_run(self, task: Task) -> TaskRun:
        run = TaskRun(
            task=task,
            processor=self.processors(task.type),
            capacity=2 * self.config.concurrency,
        )
        run.room.set()
        run.spent = task.tokens.total
        self.runs[task.task_id] = run
        return run

    async def _open(self, run: TaskRun, task: Task) -> None:
        if not run.is_open:
            run.pause_asked = False
            run.failing_streak = 0
        run.task = task
        if run.subscription is None and not self._stopping:
            prefetch = max(2, run.capacity // self.config.job_size)

            async def handler(delivery: Delivery) -> None:
                await self._on_job(run, delivery)

            run.subscription = await self.broker.consume_jobs(
                task.task_id, handler, prefetch=prefetch
            )
            logger.info("consuming task_id=%s", task.task_id)
        self._pump()

    async def _close(self, run: TaskRun) -> None:
        """Stop starting documents of a task that is no longer running."""
        if run.subscription is not None:
            sub, run.subscription = run.subscription, None
            await sub.cancel()
        cancel = run.task.state in (T.CANCELLING, T.CANCELLED, T.FAILED)
        as_state = DocumentState.CANCELLED if cancel else DocumentState.PENDING
        if cancel:
            for worker, _ in list(run.inflight.values()):
                worker.interrupt(run.task_id, DocumentState.CANCELLED)
        await self._release_ready(run, as_state)
        if run.task.state in ENDED_STATES and not run.inflight:
            self.runs.pop(run.task_id, None)

    async def _release_ready(
        self, run: TaskRun, as_state: DocumentState, *, keep: set[str] | None = None
    ) -> None:
        kept = [c for c in run.ready if keep and c.doc_id in keep]
        claims = [c for c in run.ready if not (keep and c.doc_id in keep)]
        run.ready = deque(kept)
        run.suspects -= {c.doc_id for c in claims}
        self._check_isolation()
        run.room.set()
        if not claims:
            return
        outcomes = [
            Outcome(doc_id=c.doc_id, fence=c.fence, state=as_state) for c in claims
        ]
        await self.store.settle(run.task_id, outcomes)
        if as_state is DocumentState.PENDING:
            self._publish(run.task_id, [c.doc_id for c in claims])

    async def _settle_task(self, task: Task) -> None:
        """Finish a pause or a cancel once nothing of the task runs anywhere."""
        run = self.runs.get(task.task_id)
        if run is not None and run.inflight:
            return
        if task.state is T.CANCELLING:
            await self.store.cancel_open(task.task_id)
        if (await self.store.counts(task.task_id)).running:
            return
        target = T.PAUSED if task.state is T.PAUSING else T.CANCELLED
        try:
            done = await self.store.transition_task(
                task.task_id, target, expected=[task.state], reason=task.reason
            )
        except TransitionRefused:
            return
        if target is T.CANCELLED:
            await self.broker.delete_jobs(task.task_id)
        await self._after_change(done)

    # Jobs and dispatch

    async def _on_job(self, run: TaskRun, delivery: Delivery) -> None:
        try:
            job = DocumentJob.model_validate_json(delivery.body)
        except ValidationError as err:
            logger.error("unreadable job dropped task_id=%s: %s", run.task_id, err)
            await delivery.ack()
            return
        await self._wait_to_claim(run, job)
        # Reserved with no await since the room was seen (see has_room).
        run.claiming += len(job.doc_ids)
        try:
            await self._claim_job(run, job, delivery)
        finally:
            run.claiming -= len(job.doc_ids)
            if run.has_room():
                run.room.set()

    async def _claim_job(
        self, run: TaskRun, job: DocumentJob, delivery: Delivery
    ) -> None:
        if not run.is_open or run.subscription is None:
            # Paused or cancelled meanwhile: the job goes back to its queue (a
            # cancelled subscription has already requeued it).
            with contextlib.suppress(BrokerError):
                await delivery.nack(requeue=True)
            return
        try:
            claims = await self.store.claim(
                run.task_id,
                self.config.owner,
                doc_ids=job.doc_ids,
                limit=len(job.doc_ids),
                lease_seconds=self.config.lease_seconds,
            )
        except StoreError as err:
            # Nothing was claimed that we know of: the job goes back to its
            # queue (a claim that did land is reclaimed when its lease ends).
            logger.warning("claim failed task_id=%s: %s", run.task_id, err)
            await asyncio.sleep(0.5)
            with contextlib.suppress(BrokerError):
                await delivery.nack(requeue=True)
            return
        failpoints.hit("after-claim")
        # The claims are durable: from here the leases carry the work, so the
        # message may go. Ids that were not claimable (completed, or running
        # elsewhere) are skipped: a redelivered job does nothing twice.
        with contextlib.suppress(BrokerError):
            await delivery.ack()
        if job.suspect:
            run.suspects.update(c.doc_id for c in claims)
            self._check_isolation()
            await self._release_unstarted()
        if claims:
            await self._admit(run, claims, suspect=job.suspect)

    async def _wait_to_claim(self, run: TaskRun, job: DocumentJob) -> None:
        """Wait out any isolation, then for room in the task's buffer."""
        while not self._isolation.is_set():
            await self._isolation.wait()
        if job.suspect:
            # Reserve the isolation before claiming (no await in between):
            # one suspect at a time is claimed here, so a crash charges one.
            # It needs no room: the buffer is given back before it runs.
            self._isolation.clear()
            return
        while run.is_open and not run.has_room():
            run.room.clear()
            await run.room.wait()

    async def _release_unstarted(self) -> None:
        # A suspect is about to run alone: claims that have not started are
        # given back (attempt refunded) so that if it kills the process again,
        # they are not charged for it.
        for run in list(self.runs.values()):
            await self._release_ready(run, DocumentState.PENDING, keep=run.suspects)

    async def _admit(
        self, run: TaskRun, claims: list[Claim], *, suspect: bool = False
    ) -> None:
        # Read the task after claiming: a pause that landed before the claim is
        # seen here, and one that lands after it finds the claims running and
        # waits for them, so no document starts once the task reports paused.
        task = await self.store.get_task(run.task_id)
        run.task = task
        run.spent = max(run.spent, task.tokens.total)
        if task.state is not T.RUNNING:
            run.ready.extend(claims)
            await self._close(run)
            return
        run.ready.extend(claims)
        if not suspect and not self._isolation.is_set():
            # Claimed while a suspect took the process: give them back.
            await self._release_unstarted()
        self._pump()

    def _pump(self) -> None:
        """Give ready documents to idle workers, taking tasks in turn.

        A suspect document (its last attempt died with its worker) runs alone:
        while one is claimed, nothing new is claimed or started beside it, so
        that if it kills the process again it is the only one charged for it.
        """
        while self.idle:
            isolated = not self._isolation.is_set()
            run = self._next_suspect() if isolated else self._next_run()
            if run is None:
                return
            claim = run.ready.popleft()
            if run.has_room():
                run.room.set()
            worker = self.idle.popleft()
            run.inflight[claim.doc_id] = (worker, claim)
            worker.tell(WorkItem(run.task, claim, run.processor))

    def _next_suspect(self) -> TaskRun | None:
        if self._inflight_total():
            return None
        for run in self.runs.values():
            if not run.is_open:
                continue
            for claim in run.ready:
                if claim.doc_id in run.suspects:
                    # Bring it to the front, where _pump takes from.
                    run.ready.remove(claim)
                    run.ready.appendleft(claim)
                    return run
        return None

    def _check_isolation(self) -> None:
        if not any(r.suspects for r in self.runs.values()):
            self._isolation.set()

    def _next_run(self) -> TaskRun | None:
        runs = [
            r for r in self.runs.values() if r.ready and r.is_open and r.under_limit()
        ]
        if not runs:
            return None
        self._rr += 1
        return runs[self._rr % len(runs)]

    def _may_start(self, item: WorkItem) -> bool:
        run = self.runs.get(item.task.task_id)
        if run is None or not run.is_open:
            return False
        if run.over_budget():
            budget = run.task.config.token_budget
            self._pause_for(
                run, f"token budget of {budget} reached ({run.spent} spent)"
            )
            return False
        self.started_documents += 1
        return True

    def _pause_for(self, run: TaskRun, reason: str) -> None:
        """Pause a task on the system's own account, once, with the reason."""
        if run.pause_asked:
            return
        run.pause_asked = True
        logger.warning("pausing task task_id=%s: %s", run.task_id, reason)
        self._spawn(self._system_pause(run.task_id, reason))

    async def _system_pause(self, task_id: str, reason: str) -> None:
        try:
            task = await self.store.transition_task(
                task_id, T.PAUSING, expected=[T.RUNNING], reason=reason
            )
        except TransitionRefused:
            return
        await self._after_change(task)

    def _on_finished(self, finished: Finished) -> None:
        task_id, doc_id = finished.item.key
        run = self.runs.get(task_id)
        if run is not None:
            run.inflight.pop(doc_id, None)
            if doc_id in run.suspects:
                run.suspects.discard(doc_id)
                self._check_isolation()
        self.idle.append(finished.worker)
        outcome = finished.outcome
        if run is not None and outcome is not None and finished.written:
            self._account(run, outcome)
        if outcome is not None and finished.written:
            if outcome.state is DocumentState.PENDING:
                self._publish(task_id, [doc_id])
            elif (
                outcome.state is DocumentState.FAILED
                and not finished.item.task.config.use_checkpoints
            ):
                self._spawn(self._fail_legacy(finished.item.task, outcome))
        if run is not None and not run.inflight:
            self._look_again(run)
        if not self._inflight_total():
            self._quiet.set()
        self._pump()

    def _look_again(self, run: TaskRun) -> None:
        """Without waiting for the sweep, look at a task with nothing in flight.

        A paused or cancelled task may settle; a running one with nothing
        buffered may have ended.
        """
        if not run.is_open:
            self.tell(StateIn(run.task_id))
        elif not run.ready:
            self.tell(Idle(run.task_id))

    def _account(self, run: TaskRun, outcome: Outcome) -> None:
        """Count a settled document's tokens and the provider's failure streak."""
        run.spent += outcome.tokens.total
        if outcome.state is DocumentState.COMPLETED:
            run.failing_streak = 0
        elif outcome.error is not None and not outcome.error.permanent:
            run.failing_streak += 1
            limit = self.config.provider_failure_pause
            if limit and run.failing_streak >= limit and run.is_open:
                self._pause_for(
                    run,
                    f"{run.failing_streak} documents in a row failed transiently "
                    f"(last: {outcome.error.type}: {outcome.error.message[:200]})",
                )

    async def _fail_legacy(self, task: Task, outcome: Outcome) -> None:
        error = outcome.error.message if outcome.error else "no error recorded"
        reason = f"document {outcome.doc_id!r} failed: {error}"
        try:
            failed = await self.store.transition_task(
                task.task_id, T.FAILED, expected=[T.RUNNING], reason=reason
            )
        except TransitionRefused:
            return
        await self.store.cancel_open(task.task_id)
        await self.broker.delete_jobs(task.task_id)
        await self._after_change(failed)

    # Publishing

    def _publish(
        self, task_id: str, doc_ids: Sequence[str], *, suspect: bool = False
    ) -> None:
        self._spawn(self._publish_now(task_id, doc_ids, suspect=suspect))

    async def _publish_now(
        self, task_id: str, doc_ids: Sequence[str], *, suspect: bool = False
    ) -> None:
        size = 1 if suspect else self.config.job_size
        bodies = [
            DocumentJob(
                task_id=task_id, doc_ids=tuple(doc_ids[i : i + size]), suspect=suspect
            )
            .model_dump_json()
            .encode()
            for i in range(0, len(doc_ids), size)
        ]
        if bodies:
            await self.broker.publish_jobs(task_id, bodies)

    async def _publish_open(self, task_id: str) -> None:
        async for batch in self.store.iter_open(
            task_id, batch_size=20 * self.config.job_size
        ):
            await self._publish_now(task_id, batch)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background step failed: %r", task.exception())

    async def _settle_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # Sweep

    async def _sweep(self) -> None:
        for task in await self.store.list_tasks(states=[T.PENDING], limit=1000):
            if task.sealed:
                await self._start_task(task)
        live = await self.store.list_tasks(states=LIVE_STATES, limit=1000)
        for task in live:
            await self._sweep_task(task)
        live_ids = {t.task_id for t in live}
        for run in [r for r in self.runs.values() if r.task_id not in live_ids]:
            await self._on_state(run.task_id)

    async def _start_task(self, task: Task) -> None:
        try:
            started = await self.store.transition_task(
                task.task_id, T.RUNNING, expected=[T.PENDING], reason="started"
            )
        except TransitionRefused:
            return
        logger.info(
            "task started task_id=%s documents=%d", task.task_id, task.total_documents
        )
        self._spawn(self._publish_open(task.task_id))
        await self._after_change(started)

    async def _sweep_task(self, task: Task) -> None:
        report = await self.store.reclaim_expired(
            task.task_id, max_attempts=task.config.max_attempts
        )
        if report.released:
            self._publish(task.task_id, report.released, suspect=True)
        if task.state is T.RUNNING:
            if task.task_id not in self.runs:
                await self._on_state(task.task_id, task)
            await self._publish_due(task)
            await self._maybe_complete(task)
        else:
            await self._on_state(task.task_id, task)

    async def _publish_due(self, task: Task) -> None:
        now = time.monotonic()
        self._recent = {
            k: t for k, t in self._recent.items() if now - t < self.config.lease_seconds
        }
        due = await self.store.due_retries(task.task_id, limit=1000)
        fresh = [d for d in due if (task.task_id, d) not in self._recent]
        for doc_id in fresh:
            self._recent[(task.task_id, doc_id)] = now
        if fresh:
            self._publish(task.task_id, fresh)

    async def _complete_if_done(self, task_id: str) -> None:
        run = self.runs.get(task_id)
        if run is None or not run.is_open or run.ready or run.inflight:
            return
        counts = await self.store.counts(task_id)
        if counts.open == 0:
            await self._complete(run.task, counts.failed)

    async def _maybe_complete(self, task: Task) -> None:
        counts = await self.store.counts(task.task_id)
        if counts.open == 0:
            await self._complete(task, counts.failed)
            return
        run = self.runs.get(task.task_id)
        idle_here = run is None or not (run.ready or run.inflight)
        if (
            counts.pending
            and not counts.running
            and idle_here
            and not await self.broker.job_depth(task.task_id)
        ):
            self._stalled(run, task)
        elif run is not None:
            run.stalled_sweeps = 0

    def _stalled(self, run: TaskRun | None, task: Task) -> None:
        # Open documents, none running, none queued: a publish was lost to a
        # crash, or the counters are short. Twice in a row, repair the
        # counters and put the open documents back on the queue.
        if run is None:
            return
        run.stalled_sweeps += 1
        if run.stalled_sweeps >= 2:
            run.stalled_sweeps = 0
            logger.warning(
                "task stalled, republishing its open documents task_id=%s", task.task_id
            )
            self._spawn(self._repair(task.task_id))

    async def _repair(self, task_id: str) -> None:
        await self.store.recount(task_id)
        await self._publish_open(task_id)

    async def _complete(self, task: Task, failed: int) -> None:
        if failed and not task.config.use_checkpoints:
            target = T.FAILED
        elif isinstance(self._processor_of(task), Merging):
            await self._begin_finalize(task)
            return
        else:
            target = T.COMPLETED_WITH_FAILURES if failed else T.COMPLETED
        await self._end(task, target, failed, expected=T.RUNNING)

    async def _end(
        self, task: Task, target: TaskState, failed: int, *, expected: TaskState
    ) -> None:
        try:
            done = await self.store.transition_task(
                task.task_id,
                target,
                expected=[expected],
                reason=f"{failed} documents failed" if failed else None,
            )
        except TransitionRefused:
            return
        logger.info("task ended task_id=%s state=%s", task.task_id, target)
        await self.broker.delete_jobs(task.task_id)
        await self._after_change(done)

    # Finalize

    def _processor_of(self, task: Task) -> Processor:
        run = self.runs.get(task.task_id)
        return run.processor if run is not None else self.processors(task.type)

    async def _begin_finalize(self, task: Task) -> None:
        # The claim on the phase is written before the transition, so that no
        # other supervisor finds a finalizing task with a stale heartbeat.
        await self._finalize_heartbeat(task.task_id)
        try:
            moving = await self.store.transition_task(
                task.task_id,
                T.FINALIZING,
                expected=[T.RUNNING],
                reason="merging the documents' results",
            )
        except TransitionRefused:
            return
        await self._after_change(moving)

    async def _finalize_heartbeat(self, task_id: str) -> None:
        state = await self.store.get_task_result(task_id) or {}
        state.update(owner=self.config.owner, heartbeat=time.time())
        await self.store.put_task_result(task_id, state)

    async def _adopt_finalize(self, task: Task) -> None:
        """Run a finalizing task's phase here, unless it is alive elsewhere."""
        if task.task_id in self._finalizing or self._stopping:
            return
        state = await self.store.get_task_result(task.task_id) or {}
        mine = state.get("owner") == self.config.owner
        stale = (
            time.time() - float(state.get("heartbeat", 0)) > self.config.lease_seconds
        )
        if mine or stale:
            self._finalizing.add(task.task_id)
            self._spawn(self._finalize(task.task_id))

    async def _finalize(self, task_id: str) -> None:
        try:
            await self._merge_all(task_id)
        finally:
            self._finalizing.discard(task_id)

    async def _merge_all(self, task_id: str) -> None:
        """Merge completed documents' results batch by batch, checkpointed.

        The cursor is the last merged document's (finished_at, seq): after a
        kill the phase resumes from it, and documents completed later (after a
        retry-failed) come after it and are merged once.
        """
        task = await self.store.get_task(task_id)
        processor = self._processor_of(task)
        if not isinstance(processor, Merging):
            raise TypeError(f"processor {processor.name!r} has no merge phase")
        state = await self.store.get_task_result(task_id) or {}
        while task.state is T.FINALIZING:
            cursor = decode_cursor(state.get("cursor"))
            page = await self.store.page_completed(
                task_id, after=cursor, limit=FINALIZE_BATCH
            )
            if not page:
                break
            results = [await self.store.get_result(task_id, d.doc_id) for d in page]
            loop = asyncio.get_running_loop()
            state["result"] = await loop.run_in_executor(
                None, processor.merge, state.get("result"), [r for r in results if r]
            )
            last = page[-1]
            finished = last.finished_at or last.updated_at  # completed: always set
            state["cursor"] = [finished.isoformat(), last.seq]
            state["documents"] = int(state.get("documents", 0)) + len(page)
            state.update(owner=self.config.owner, heartbeat=time.time())
            await self.store.put_task_result(task_id, state)
            failpoints.hit("mid-finalize")
            task = await self.store.get_task(task_id)
        if task.state is T.FINALIZING:
            failed = (await self.store.counts(task_id)).failed
            target = T.COMPLETED_WITH_FAILURES if failed else T.COMPLETED
            await self._end(task, target, failed, expected=T.FINALIZING)

    # Leases

    async def _heartbeat(self) -> None:
        for run in list(self.runs.values()):
            held = self._held(run)
            if not held:
                continue
            kept = set(
                await self.store.extend_leases(
                    run.task_id, list(held), lease_seconds=self.config.lease_seconds
                )
            )
            failpoints.hit("lease-extension")
            # Documents settled while the extension was on its way are not
            # lost: only those still held now, under the same fence, are.
            still = self._held(run)
            self._drop_lost(run, [k for k in held if k[0] not in kept and k in still])

    def _held(self, run: TaskRun) -> set[tuple[str, int]]:
        held = {(c.doc_id, c.fence) for c in run.ready}
        held.update((c.doc_id, c.fence) for _, c in run.inflight.values())
        return held

    def _drop_lost(self, run: TaskRun, lost: Iterable[tuple[str, int]]) -> None:
        for doc_id, fence in lost:
            logger.warning("lease lost task_id=%s doc_id=%s", run.task_id, doc_id)
            run.ready = deque(
                c for c in run.ready if (c.doc_id, c.fence) != (doc_id, fence)
            )
            entry = run.inflight.get(doc_id)
            if entry is not None and entry[1].fence == fence:
                entry[0].interrupt(run.task_id, DocumentState.PENDING)


def decode_cursor(raw: Any) -> tuple[datetime, int] | None:
    """Return a finalize cursor as stored (an ISO time and a seq), or None."""
    if not raw:
        return None
    return datetime.fromisoformat(raw[0]), int(raw[1])


__all__ = ["Supervisor", "SupervisorConfig", "default_owner"]
