"""The persisted domain: tasks, documents, checkpoints and transitions.

These pydantic models are what both stores read and write, and what the
gateway and the actors exchange with the store. They carry no behaviour beyond
validation and a few derived figures.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store.states import DocumentState, TaskState

MAX_DOC_ID_LENGTH = 256


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_task_id() -> str:
    """Return a fresh task id: 32 lowercase hex characters, no separators."""
    return uuid.uuid4().hex


class Frozen(BaseModel):
    """Base of the immutable value models."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenUsage(Frozen):
    """Tokens spent, split as the providers report them."""

    prompt: int = Field(0, ge=0)
    completion: int = Field(0, ge=0)

    @property
    def total(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt + self.completion

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt=self.prompt + other.prompt,
            completion=self.completion + other.completion,
        )


class TaskConfig(Frozen):
    """How a task runs; fixed when the task is created."""

    use_checkpoints: bool = True
    max_attempts: int = Field(3, ge=1, le=100)
    backoff_base: float = Field(2.0, gt=0, description="first retry delay, seconds")
    backoff_cap: float = Field(300.0, gt=0, description="longest retry delay, seconds")
    concurrency: int | None = Field(None, ge=1, description="documents in flight")
    token_budget: int | None = Field(None, ge=1)
    model: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:/@-]+$",
        description="the provider's model for this task; never a URL",
    )

    @field_validator("model")
    @classmethod
    def _not_a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError(
                f"model {value!r} looks like a URL: a task names a model, the "
                "endpoint comes from the settings"
            )
        return value

    @model_validator(mode="after")
    def _cap_covers_base(self) -> Self:
        if self.backoff_cap < self.backoff_base:
            raise ValueError(
                f"backoff_cap {self.backoff_cap!r} must be at least "
                f"backoff_base {self.backoff_base!r}"
            )
        return self

    def retry_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the delay before retrying after failed attempt number ``attempt``.

        Exponential backoff with full jitter: uniform in ``[0, min(cap,
        base * 2**(attempt - 1))]``, never shorter than a tenth of that bound so
        that a burst of failures does not come straight back.
        """
        bound = min(self.backoff_cap, self.backoff_base * 2.0 ** max(attempt - 1, 0))
        draw: float = (rng or random).uniform(0.1, 1.0)
        return bound * draw


class DocumentInput(Frozen):
    """One document as a user hands it in: inline text or a URI, not both."""

    doc_id: str = Field(min_length=1, max_length=MAX_DOC_ID_LENGTH)
    text: str | None = None
    uri: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.text is None) == (self.uri is None):
            raise ValueError(
                f"document {self.doc_id!r} needs exactly one of 'text' or 'uri'"
            )
        return self


class NewTask(Frozen):
    """What is needed to create a task, apart from its documents."""

    tenant: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=64)
    config: TaskConfig = TaskConfig()
    task_id: str = Field(default_factory=new_task_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class SettledCounts(Frozen):
    """The stored counters of a task: documents that reached a final state."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class TaskCounts(Frozen):
    """Every document of a task, counted by state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    retry_wait: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def open(self) -> int:
        """Documents that have not reached a final state."""
        return self.pending + self.running + self.retry_wait


class Task(Frozen):
    """A task as the store holds it (its history is read separately)."""

    task_id: str
    tenant: str
    type: str
    state: TaskState
    config: TaskConfig
    total_documents: int = 0
    settled: SettledCounts = SettledCounts()
    tokens: TokenUsage = TokenUsage()
    sealed: bool = False
    version: int = 0
    reason: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    paused_at: datetime | None = None
    resumed_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None


class Transition(Frozen):
    """One entry of a task's history: a transition made or refused."""

    seq: int
    from_state: TaskState | None
    to_state: TaskState
    at: datetime
    reason: str | None = None
    request_id: str | None = None
    accepted: bool = True


class DocumentError(Frozen):
    """Why an attempt failed: the error's class and message."""

    type: str
    message: str
    permanent: bool = False


AttemptOutcome = Literal[
    "completed", "failed", "retry_wait", "cancelled", "interrupted", "lost"
]


class AttemptRecord(Frozen):
    """What one attempt at a document did and spent."""

    attempt: int
    fence: int
    owner: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    outcome: AttemptOutcome
    tokens: TokenUsage = TokenUsage()
    error: DocumentError | None = None


class DocumentCheckpoint(Frozen):
    """The checkpoint of one document: the truth about where it stands."""

    task_id: str
    doc_id: str
    seq: int
    state: DocumentState
    attempts: int = 0
    fence: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    next_attempt_at: datetime | None = None
    error: DocumentError | None = None
    tokens: TokenUsage = TokenUsage()
    attempt_log: tuple[AttemptRecord, ...] = ()
    result_ref: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class DocumentContent(Frozen):
    """A document's content, read by the processor that works on it."""

    doc_id: str
    text: str | None = None
    uri: str | None = None


class Claim(Frozen):
    """A document leased to one worker, with the fencing token of the lease."""

    doc_id: str
    fence: int
    attempt: int
    lease_expires_at: datetime


class Outcome(Frozen):
    """How a claimed document's attempt ended, to be written under its fence.

    ``state`` is ``completed``, ``failed``, ``retry_wait`` (then
    ``next_attempt_at`` is required), ``cancelled``, or ``pending`` for an
    attempt interrupted through no fault of the document (the attempt is given
    back).
    """

    doc_id: str
    fence: int
    state: DocumentState
    tokens: TokenUsage = TokenUsage()
    error: DocumentError | None = None
    next_attempt_at: datetime | None = None
    result_ref: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.state is DocumentState.RUNNING:
            raise ValueError(f"document {self.doc_id!r}: 'running' is not an outcome")
        if self.state is DocumentState.RETRY_WAIT and self.next_attempt_at is None:
            raise ValueError(
                f"document {self.doc_id!r}: 'retry_wait' needs next_attempt_at"
            )
        return self


SettleResult = Literal["accepted", "duplicate", "stale"]


class ReclaimReport(Frozen):
    """What a sweep of expired leases did."""

    released: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
