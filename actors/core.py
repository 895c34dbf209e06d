"""The actor core: actors with a mailbox, and the supervision that restarts them.

An `Actor` is one asyncio task draining its mailbox one message at a time, in
the order the messages arrived. `Supervision` starts actors from `ChildSpec`
factories, restarts a failed one with exponential backoff, and gives up on it,
with a report, once it fails too often within a window. The taskpoint
supervisor actor and the document workers are built on these two.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Self

from store.errors import TaskpointError

__all__ = [
    "Actor",
    "ActorError",
    "ActorStopped",
    "Backoff",
    "ChildSpec",
    "GiveUpCallback",
    "RestartLimitReached",
    "RestartPolicy",
    "Supervision",
]

logger = logging.getLogger(__name__)


class ActorError(TaskpointError):
    """An actor or a supervision was used in a way its lifecycle does not allow."""


class ActorStopped(ActorError):
    """The actor is stopped, or stopping, and takes no more messages."""

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} is stopped and takes no more messages")
        self.name = name


class RestartLimitReached(ActorError):
    """A supervised child failed too often within its window; it stays down."""

    def __init__(
        self, name: str, restarts: int, window: float, last_error: BaseException
    ) -> None:
        super().__init__(
            f"child {name!r} failed again after {restarts} restarts within "
            f"{window!r}s; not restarting it; last error: {last_error!r}"
        )
        self.name = name
        self.restarts = restarts
        self.last_error = last_error


@dataclass(slots=True)
class _Envelope:
    message: Any
    reply: asyncio.Future[Any] | None = None


# The stop request travels through the mailbox, behind every message told
# before it: that is what lets those messages still be handled.
_STOP: Final = _Envelope(object())


def _settle(
    future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    # An asker that timed out or was cancelled has already settled its future.
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Actor:
    """An asyncio task that handles the messages of its mailbox one at a time.

    Subclasses override the `on_*` hooks, which all run in the actor's own task,
    never concurrently with each other. Base-class state is prefixed `actor_`
    (public) or `_actor_` so that subclass attributes cannot collide with it.

    Attributes:
        actor_name: A name for logs and error messages.
        actor_stopped: Set once the actor's task has ended, hooks included.
        actor_failure: The exception the actor died of, or None.
    """

    def __init__(self, name: str | None = None) -> None:
        """Build the actor; it handles nothing until `start()`.

        Args:
            name: A name for logs; by default the class name and the object id.
        """
        self.actor_name = name or f"{type(self).__name__}-{id(self):x}"
        self.actor_stopped = asyncio.Event()
        self.actor_failure: Exception | None = None
        self._actor_mailbox: asyncio.Queue[_Envelope] = asyncio.Queue()
        self._actor_task: asyncio.Task[None] | None = None
        self._actor_current: _Envelope | None = None
        self._actor_closed = False

    async def on_start(self) -> None:
        """Prepare the actor; runs in its task before the first message.

        If it raises, the actor fails: `on_failure` runs with the exception,
        waiting asks get `ActorStopped`, and `start()` raises the exception.
        """

    async def on_receive(self, message: Any) -> Any:
        """Handle one message; runs in the actor's task, in mailbox order.

        Returns:
            The reply to an `ask`; ignored for a `tell`.

        Raises:
            Exception: For an asked message the exception goes to the asker and
                the actor keeps running. For a told message it is a failure of
                the actor: `on_failure` runs and the actor stops.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.on_receive is not implemented; "
            f"it cannot handle {message!r}"
        )

    async def on_stop(self) -> None:
        """Release what the actor holds; runs in its task after a requested stop.

        Every message told before `stop()` has been handled by then. If it
        raises, the error is logged and kept as `actor_failure`; the actor is
        stopped all the same.
        """

    async def on_failure(self, exc: Exception) -> None:
        """Clean up after a failure; runs in the actor's task instead of `on_stop`.

        Called once `on_start` or a told message raised `exc`, after the asks
        still waiting have been failed. If it raises, the error is logged and
        the actor stops all the same; a `Supervision` decides what comes next.
        """

    @property
    def actor_alive(self) -> bool:
        """Whether the actor was started and its task has not ended."""
        return self._actor_task is not None and not self.actor_stopped.is_set()

    async def start(self) -> Self:
        """Start the actor's task and return once `on_start` completed.

        Raises:
            ActorError: The actor was started or stopped before.
            Exception: Whatever `on_start` raised; the actor is stopped by then.
        """
        if self._actor_task is not None or self._actor_closed:
            raise ActorError(
                f"actor {self.actor_name!r} was started or stopped before; "
                "build a new one to start again"
            )
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._actor_task = asyncio.create_task(
            self._actor_run(started), name=f"actor {self.actor_name}"
        )
        try:
            await started
        except asyncio.CancelledError:
            # A caller that gives up on the start must not leave the actor behind.
            self._actor_task.cancel()
            raise
        return self

    def tell(self, message: Any) -> None:
        """Queue a message for the actor and return at once.

        Raises:
            ActorStopped: The actor is stopped or stopping.
        """
        self._actor_check_open()
        self._actor_mailbox.put_nowait(_Envelope(message))

    async def ask(
        self,
        message: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (pykka's ask takes one too)
    ) -> Any:
        """Queue a message and wait for the reply of `on_receive`.

        An actor must not ask itself: it would wait on its own mailbox forever.

        Args:
            message: The message to handle.
            timeout: Seconds to wait for the reply; None waits as long as it takes.
                A message whose asker timed out is still handled.

        Returns:
            What `on_receive` returned.

        Raises:
            ActorStopped: The actor stopped, or died, before it handled the message.
            TimeoutError: No reply within `timeout`.
            Exception: Whatever `on_receive` raised for this message.
        """
        self._actor_check_open()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._actor_mailbox.put_nowait(_Envelope(message, reply))
        async with asyncio.timeout(timeout):
            return await reply

    # ASYNC109: this timeout is a grace period after which the actor is
    # cancelled; a caller's own asyncio.timeout would cancel only the wait.
    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop the actor once it handled every message told before this call.

        Takes effect at once for new messages, which are refused. Called by the
        actor on itself, it returns without waiting; the actor stops after the
        message it is handling.

        Args:
            timeout: Seconds to wait for the queued messages and `on_stop`; then
                the actor's task is cancelled and `on_stop` may not run.
        """
        if not self._actor_closed:
            self._actor_closed = True
            self._actor_mailbox.put_nowait(_STOP)
        task = self._actor_task
        if task is None:
            self._actor_fail_pending(None)
            self.actor_stopped.set()
            return
        if task is asyncio.current_task():
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.warning(
                "actor %s did not stop within %ss; cancelling it",
                self.actor_name,
                timeout,
            )
            task.cancel()
            await asyncio.wait({task})

    async def join(self) -> Exception | None:
        """Wait until the actor's task has ended; return what it died of, if any."""
        await self.actor_stopped.wait()
        return self.actor_failure

    def _actor_check_open(self) -> None:
        if self._actor_closed:
            raise ActorStopped(self.actor_name)

    async def _actor_run(self, started: asyncio.Future[None]) -> None:
        failure: Exception | None = None
        try:
            failure = await _call_hook(self.on_start)
            if failure is None:
                logger.info("actor %s started", self.actor_name)
                _settle(started)
                failure = await self._actor_loop()
            await self._actor_finish(failure)
        finally:
            # Also reached when the task is cancelled: no ask may hang on it.
            self._actor_fail_pending(failure)
            self.actor_stopped.set()
            _settle(started, exc=failure or ActorStopped(self.actor_name))

    async def _actor_loop(self) -> Exception | None:
        while True:
            envelope = await self._actor_mailbox.get()
            if envelope is _STOP:
                return None
            self._actor_current = envelope
            failure = await self._actor_handle(envelope)
            self._actor_current = None
            if failure is not None:
                return failure

    async def _actor_handle(self, envelope: _Envelope) -> Exception | None:
        try:
            result = await self.on_receive(envelope.message)
        except Exception as exc:
            if envelope.reply is None:
                return exc
            _settle(envelope.reply, exc=exc)
            return None
        if envelope.reply is not None:
            _settle(envelope.reply, result)
        return None

    async def _actor_finish(self, failure: Exception | None) -> None:
        # Refuse new messages and fail the waiting asks before any hook runs,
        # so that askers learn of a death at once rather than after cleanup.
        self._actor_closed = True
        self._actor_fail_pending(failure)
        if failure is None:
            self.actor_failure = await _call_hook(self.on_stop)
            if self.actor_failure is not None:
                logger.error(
                    "actor %s: on_stop raised",
                    self.actor_name,
                    exc_info=self.actor_failure,
                )
            logger.info("actor %s stopped", self.actor_name)
            return
        self.actor_failure = failure
        logger.error("actor %s failed: %r", self.actor_name, failure, exc_info=failure)
        error = await _call_hook(self.on_failure, failure)
        if error is not None:
            logger.error("actor %s: on_failure raised", self.actor_name, exc_info=error)

    def _actor_fail_pending(self, cause: Exception | None) -> None:
        self._actor_closed = True
        pending = [self._actor_current] if self._actor_current else []
        self._actor_current = None
        while not self._actor_mailbox.empty():
            pending.append(self._actor_mailbox.get_nowait())
        dropped = 0
        for envelope in pending:
            if envelope.reply is not None:
                error = ActorStopped(self.actor_name)
                error.__cause__ = cause
                _settle(envelope.reply, exc=error)
            elif envelope is not _STOP:
                dropped += 1
        if dropped:
            logger.warning(
                "actor %s dropped %d told messages", self.actor_name, dropped
            )


async def _call_hook(
    hook: Callable[..., Awaitable[None]], *args: Any
) -> Exception | None:
    try:
        await hook(*args)
    except Exception as exc:
        return exc
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays between restarts, capped, with jitter.

    Attributes:
        base: The first delay, in seconds; each next one doubles.
        cap: No delay is longer than this, in seconds.
        jitter: The fraction (0 to 1) of a delay that may be taken off at random,
            so that children that failed together do not restart together.
    """

    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before restart number `attempt` (1 for the first)."""
        raw = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return raw * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How often a child may fail before its supervision gives up on it.

    Attributes:
        max_restarts: Restarts allowed within `window`; one more failure gives up.
        window: Seconds over which failures are counted; older ones are forgotten,
            and the backoff falls back with them.
        backoff: The delays between restarts.
    """

    max_restarts: int = 5
    window: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A supervised child: its name, how to build it, and its restart policy."""

    name: str
    factory: Callable[[], Actor]
    policy: RestartPolicy = field(default_factory=RestartPolicy)


GiveUpCallback = Callable[[RestartLimitReached], Awaitable[None]]


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    actor: Actor
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque)
    watcher: asyncio.Task[RestartLimitReached | None] | None = None

    def note_failure(self, now: float) -> int:
        """Record a failure; return how many fell within the window."""
        self.failures.append(now)
        while now - self.failures[0] > self.spec.policy.window:
            self.failures.popleft()
        return len(self.failures)


class Supervision:
    """Starts children, restarts the failed ones, and stops them in reverse order.

    A child that fails is restarted from its factory after a backoff; one that
    stops without failing stays stopped. Once a child exceeds its restart
    policy it stays down and the supervision reports it (the `on_give_up`
    callback and `wait()`); its siblings keep running, since the owner of the
    supervision knows better whether they can do without it.
    """

    def __init__(
        self,
        *,
        on_give_up: GiveUpCallback | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Build an empty supervision.

        Args:
            on_give_up: Awaited with the report when a child is given up on.
            rng: The source of the backoff jitter; a private one by default.
        """
        self._children: dict[str, _Child] = {}
        self._on_give_up = on_give_up
        self._rng = rng or random.Random()
        self._stopping = False

    async def start(self, specs: Iterable[ChildSpec]) -> None:
        """Start children in order; if one fails to start, stop all and raise."""
        try:
            for spec in specs:
                await self.start_child(spec)
        except BaseException:
            await self.stop()
            raise

    async def start_child(self, spec: ChildSpec) -> Actor:
        """Start one child and watch it; return the running actor.

        Raises:
            ActorError: The supervision is stopped, or a child of this name is
                still supervised.
            Exception: Whatever the child's start raised; it is not restarted.
        """
        previous = self._children.get(spec.name)
        if self._stopping or (previous and not _finished(previous.watcher)):
            raise ActorError(f"cannot start child {spec.name!r}: stopped or running")
        actor = await spec.factory().start()
        child = _Child(spec, actor)
        self._children.pop(spec.name, None)
        self._children[spec.name] = child
        child.watcher = asyncio.create_task(
            self._watch(child), name=f"supervision of {spec.name}"
        )
        return actor

    def child(self, name: str) -> Actor:
        """The current actor of a child (a new one after each restart)."""
        return self._child(name).actor

    def restarts(self, name: str) -> int:
        """How many times a child was restarted so far."""
        return self._child(name).restarts

    async def wait(self, name: str) -> RestartLimitReached | None:
        """Wait until a child is down for good; return the report if given up."""
        watcher = self._child(name).watcher
        assert watcher is not None  # set right after the child is registered
        await asyncio.wait({watcher})
        return None if watcher.cancelled() else watcher.result()

    async def stop_child(
        self,
        name: str,
        timeout: float | None = None,  # noqa: ASYNC109 (a grace period, as in stop)
    ) -> None:
        """Stop one child without restarting it."""
        child = self._child(name)
        await _cancel(child.watcher)
        await child.actor.stop(timeout)

    # ASYNC109: a grace period for each child, as in Actor.stop.
    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop every child, the last started first.

        Args:
            timeout: The bound given to each child's `Actor.stop`.
        """
        self._stopping = True
        children = list(self._children.values())
        # Watchers go first, so that no child is restarted while its siblings
        # are being stopped; a restart in progress is cancelled with them.
        for child in children:
            await _cancel(child.watcher)
        for child in reversed(children):
            await child.actor.stop(timeout)

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise ActorError(f"no child named {name!r} is supervised") from None

    async def _watch(self, child: _Child) -> RestartLimitReached | None:
        failure = await child.actor.join()
        while failure is not None:
            count = child.note_failure(asyncio.get_running_loop().time())
            policy = child.spec.policy
            if count > policy.max_restarts:
                return await self._give_up(child, failure)
            delay = policy.backoff.delay(count, self._rng)
            logger.warning(
                "child %s failed (%r); restarting it in %.3fs",
                child.spec.name,
                failure,
                delay,
            )
            await asyncio.sleep(delay)
            failure = await self._restart(child)
        return None

    async def _restart(self, child: _Child) -> Exception | None:
        child.restarts += 1
        try:
            actor = await child.spec.factory().start()
        except Exception as exc:
            return exc
        # Replaced only once started, so that child() never returns an actor
        # still in on_start, or one that failed there.
        child.actor = actor
        return await actor.join()

    async def _give_up(self, child: _Child, failure: Exception) -> RestartLimitReached:
        policy = child.spec.policy
        report = RestartLimitReached(
            child.spec.name, child.restarts, policy.window, failure
        )
        report.__cause__ = failure
        logger.error("%s", report)
        if self._on_give_up is not None:
            try:
                await self._on_give_up(report)
            except Exception:
                logger.exception("on_give_up raised for child %s", child.spec.name)
        return report


def _finished(task: asyncio.Task[Any] | None) -> bool:
    return task is None or task.done()


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})
