"""The processor interface: what is done to one document.

A processor is an object with a ``name`` and an async ``process`` method. The
worker gives it the document's id and a :class:`ProcessorContext`; it returns
the document's result (a JSON-able dict, stored before the document is marked
completed) or None. It signals how it failed by the exception it raises:

- :class:`TransientError` (or any exception not marked permanent): the attempt
  failed for a reason that may pass; the document is retried with backoff
  until the task's ``max_attempts``.
- :class:`PermanentError`: retrying cannot help; the document fails at once.

Cancellation arrives as :class:`asyncio.CancelledError` at an ``await``: a
processor must let it propagate (cleaning up in ``finally`` if it must).
CPU-bound steps go through :meth:`ProcessorContext.run_cpu` so that the event
loop, and with it every other document and lease heartbeat, keeps running.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ParamSpec,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from store.base import CheckpointStore
from store.errors import TaskpointError
from store.models import DocumentContent, Task, TokenUsage

if TYPE_CHECKING:
    from actors.llm import LLMBackend

P = ParamSpec("P")
R = TypeVar("R")


class ProcessorError(TaskpointError):
    """A processor could not finish a document."""

    permanent = False


class TransientError(ProcessorError):
    """The attempt failed for a reason that may pass: retry it later."""


class PermanentError(ProcessorError):
    """The document cannot be processed: do not retry it."""

    permanent = True


class UnknownProcessor(TaskpointError):
    """No processor is registered under a task type's name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"no processor named {name!r}; registered: {', '.join(known) or 'none'}"
        )
        self.name = name


@dataclass
class TokenLedger:
    """Tokens spent by one attempt, as the provider reported them."""

    prompt: int = 0
    completion: int = 0

    def add(self, prompt: int = 0, completion: int = 0) -> None:
        """Record one call's usage."""
        self.prompt += prompt
        self.completion += completion

    def usage(self) -> TokenUsage:
        """Return what was spent so far."""
        return TokenUsage(prompt=self.prompt, completion=self.completion)


@dataclass
class ProcessorContext:
    """What a processor may use while it works on one document.

    Attributes:
        task: the task, with its config.
        doc_id: the document's id.
        attempt: this attempt's number, from 1.
        fence: the fencing token of this attempt's lease.
        tokens: where the processor records the tokens it spends; failed and
            cancelled attempts count too.
        llm: the process's LLM backend, shared by every worker; None when the
            process has none configured.
    """

    task: Task
    doc_id: str
    attempt: int
    fence: int
    store: CheckpointStore
    tokens: TokenLedger = field(default_factory=TokenLedger)
    llm: LLMBackend | None = None

    async def content(self) -> DocumentContent:
        """Load the document's text or URI from the store."""
        found = await self.store.load_contents(self.task.task_id, [self.doc_id])
        return found[self.doc_id]

    async def run_cpu(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a CPU-bound function on a thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def run_all(calls: Iterable[Awaitable[R]]) -> list[R]:
    """Await ``calls`` concurrently and return their results in order.

    The first failure cancels the rest and is raised as itself (not wrapped in
    an exception group), so that the worker still sees whether it is
    transient or permanent.
    """
    tasks: list[asyncio.Task[R]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(call)) for call in calls]
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[R]) -> R:
    return await call


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


@runtime_checkable
class Processor(Protocol):
    """What is done to one document of a task of this processor's type."""

    name: str

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Process ``ctx.doc_id`` and return its result, or None.

        Raises:
            TransientError: retry later.
            PermanentError: fail the document now.
        """
        ...


@runtime_checkable
class Merging(Protocol):
    """A processor whose task ends with a finalize phase that merges results.

    After the last document, the task passes through ``finalizing``: the
    supervisor feeds the completed documents' results to :meth:`merge` in the
    order they completed, a batch at a time, and checkpoints the merged result
    with its cursor after each batch. ``merge`` must be deterministic and
    associative over batches: merging in two batches or in one gives the same.
    It runs on a thread (it may be CPU-bound).
    """

    name: str

    def merge(
        self, base: dict[str, Any] | None, results: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Return ``base`` (None at first) with ``results`` merged into it."""
        ...
